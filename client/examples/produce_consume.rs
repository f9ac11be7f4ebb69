//! Produce ten keyed records and read them back.
//!
//! Start a broker (`cargo run --release -p rill-broker`), then:
//! `cargo run -p rill-client --example produce_consume` (set RILL_BROKERS for another address).

use std::time::Duration;

use futures::StreamExt;
use rill_client::{
    Admin, Client, ClientConfig, ClientError, Consumer, ConsumerConfig, NewTopic, Producer,
    ProducerConfig, Record, SeekTo,
};
use rill_protocol::ErrorCode;

#[tokio::main]
async fn main() -> Result<(), ClientError> {
    let brokers = std::env::var("RILL_BROKERS").unwrap_or_else(|_| "127.0.0.1:9292".into());
    let client = Client::connect(ClientConfig::new(&brokers)).await?;

    match Admin::new(client.clone())
        .create_topic(NewTopic::new("example", 2))
        .await
    {
        Ok(())
        | Err(ClientError::Broker {
            code: ErrorCode::TOPIC_ALREADY_EXISTS,
            ..
        }) => {}
        Err(e) => return Err(e),
    }

    let producer = Producer::new(client.clone(), ProducerConfig::default());
    let mut deliveries = Vec::new();
    for i in 0..10 {
        let record = Record::new("example")
            .key(format!("user-{}", i % 3))
            .value(format!("event {i}"));
        deliveries.push(producer.send(record).await?);
    }
    producer.flush().await;
    for delivery in deliveries {
        let metadata = delivery.await?;
        println!(
            "sent to partition {} offset {:?}",
            metadata.partition, metadata.offset
        );
    }

    // Read everything back as a stream.
    let mut consumer = Consumer::new(client, ConsumerConfig::default());
    consumer.assign_topic("example").await?;
    consumer.seek_all(SeekTo::Earliest).await?;
    let mut stream = Box::pin(consumer.into_stream());
    let deadline = tokio::time::sleep(Duration::from_secs(5));
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            record = stream.next() => match record {
                Some(Ok(r)) => println!("{}-{}@{} {:?} = {:?}", r.topic, r.partition, r.offset, r.key, r.value),
                Some(Err(e)) => return Err(e),
                None => break,
            },
            _ = &mut deadline => break,
        }
    }
    Ok(())
}
