//! Shared by the fuzz targets: how the input is cut into reads, and a
//! poll for futures that never wait (ponte's `Lines::fill` reading from a
//! byte slice).
#![allow(dead_code)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

/// The read sizes: `seed` below 128 gives reads of `1 + seed` bytes; from
/// 128 on, sizes between 1 and 64 drawn from a generator the seed starts.
pub fn chunks(seed: u8, data: &[u8]) -> Chunks<'_> {
    Chunks {
        data,
        fixed: (seed < 128).then_some(1 + usize::from(seed)),
        state: 0x9e37_79b9 ^ u32::from(seed),
    }
}

pub struct Chunks<'a> {
    data: &'a [u8],
    fixed: Option<usize>,
    state: u32,
}

impl<'a> Iterator for Chunks<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.data.is_empty() {
            return None;
        }
        let size = self.fixed.unwrap_or_else(|| {
            // xorshift32
            self.state ^= self.state << 13;
            self.state ^= self.state >> 17;
            self.state ^= self.state << 5;
            1 + (self.state % 64) as usize
        });
        let (head, tail) = self.data.split_at(size.min(self.data.len()));
        self.data = tail;
        Some(head)
    }
}

/// Runs a future that is ready at its first poll (reading from a slice).
pub fn ready<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("a read from a byte slice had to wait"),
    }
}

/// For assertion messages.
pub fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}
