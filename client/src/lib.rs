//! `rill-client`: the async Rust client for Rill, and the `rill` CLI.
//!
//! - [`Client`]: the cluster handle (bootstrap, metadata cache, connections, retries). Cheap to
//!   clone; everything below is built on one.
//! - [`Producer`]: `send` records; they are batched per partition (`batch_size_bytes`,
//!   `linger_ms`) and pipelined, with bounded buffer memory.
//! - [`Consumer`]: assign partitions, seek, `poll` or use as a `Stream`; the next fetch is
//!   prefetched while you process records.
//! - [`Admin`]: topics, offsets, cluster.
//! - [`bench`]: measurement for load generators (`rill bench`, the peer benchmark).
//!
//! ```no_run
//! use rill_client::{Admin, Client, ClientConfig, Consumer, ConsumerConfig, NewTopic, Producer, ProducerConfig, Record};
//! # async fn run() -> Result<(), rill_client::ClientError> {
//! let client = Client::connect(ClientConfig::new("127.0.0.1:9292")).await?;
//! Admin::new(client.clone()).create_topic(NewTopic::new("orders", 4)).await?;
//!
//! let producer = Producer::new(client.clone(), ProducerConfig::default());
//! let delivery = producer.send(Record::new("orders").key("user-1").value("created")).await?;
//! let metadata = delivery.await?;
//! println!("written to partition {} at offset {:?}", metadata.partition, metadata.offset);
//!
//! let mut consumer = Consumer::new(client, ConsumerConfig::default());
//! consumer.assign_topic("orders").await?;
//! for record in consumer.poll(std::time::Duration::from_secs(1)).await? {
//!     println!("{}-{}@{}: {:?}", record.topic, record.partition, record.offset, record.value);
//! }
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod admin;
pub mod bench;
pub mod client;
mod connection;
pub mod consumer;
pub mod error;
pub mod group;
pub mod partitioner;
pub mod producer;
pub mod sasl;
pub mod tls;

pub use admin::{Admin, NewTopic};
pub use client::{Client, ClientConfig};
pub use consumer::{Consumer, ConsumerConfig, ConsumerRecord, OffsetReset, SeekTo};
pub use error::{ClientError, Result};
pub use group::{GroupConfig, RebalanceEvent};
pub use producer::{Deliveries, IntoTopic, Producer, ProducerConfig, Record, RecordMetadata};
pub use rill_protocol as protocol;
pub use rill_protocol::api::Acks;
pub use rill_protocol::batch::Compression;
pub use sasl::SaslOptions;
pub use tls::TlsOptions;
