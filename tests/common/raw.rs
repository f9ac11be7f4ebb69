//! A raw protocol connection for tests that send exact bytes or bodies (no client logic).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rill_protocol::api::{RequestBody, ResponseBody};
use rill_protocol::frame::{RequestHeader, ResponseHeader};
use rill_protocol::wire::Wire;
use rill_protocol::ErrorCode;

pub struct Raw(TcpStream);

impl Raw {
    pub fn connect(address: &str) -> Raw {
        let stream = TcpStream::connect(address).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        Raw(stream)
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    pub fn send(&mut self, api_key: u16, version: u16, body: &[u8]) {
        self.send_as("raw", api_key, version, body);
    }

    /// A request frame naming `client_id`.
    pub fn send_as(&mut self, client_id: &str, api_key: u16, version: u16, body: &[u8]) {
        let mut frame = BytesMut::new();
        frame.put_u32(0);
        RequestHeader {
            api_key,
            api_version: version,
            correlation_id: 42,
            client_id: client_id.into(),
        }
        .encode(&mut frame);
        frame.put_slice(body);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        self.send_raw(&frame);
    }

    /// The next response, or `None` if the broker closed the connection.
    pub fn receive(&mut self) -> Option<(ResponseHeader, Bytes)> {
        let mut len = [0u8; 4];
        self.0.read_exact(&mut len).ok()?;
        let mut frame = vec![0u8; u32::from_be_bytes(len) as usize];
        self.0.read_exact(&mut frame).ok()?;
        let mut frame = Bytes::from(frame);
        let header = ResponseHeader::decode(&mut frame).unwrap();
        Some((header, frame))
    }

    pub fn call(&mut self, body: RequestBody) -> ResponseBody {
        let key = body.api_key();
        self.send(key as u16, 0, &body.encode_to_bytes());
        let (header, body) = self.receive().expect("a response");
        assert_eq!(header.error_code, ErrorCode::NONE);
        ResponseBody::decode(key as u16, 0, body).unwrap()
    }

    /// `body` at `version`, as client `client_id`: its response body at that version.
    pub fn call_as(&mut self, client_id: &str, version: u16, body: RequestBody) -> ResponseBody {
        let key = body.api_key();
        self.send_as(client_id, key as u16, version, &body.encode_to_bytes());
        let (header, body) = self.receive().expect("a response");
        assert_eq!(header.error_code, ErrorCode::NONE);
        ResponseBody::decode(key as u16, version, body).unwrap()
    }
}
