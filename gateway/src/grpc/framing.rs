//! Follows the gRPC length-prefixed messages in a request body as it streams through, without
//! buffering it: each message is a 1-byte flag, a 4-byte big-endian length, then that many bytes.
//! This is how an oversized message is refused before it is forwarded, and how a body that ends
//! inside a message is noticed.

/// Where a body stands against the message size limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// A message announced more bytes than the limit allows.
    TooLarge { length: u32, limit: u32 },
    /// The body ended inside a message (its prefix or its bytes).
    Truncated,
}

#[derive(Debug, Clone, Default)]
pub struct FrameScanner {
    /// Bytes of the current 5-byte prefix seen so far.
    prefix: [u8; 5],
    prefix_len: usize,
    /// Message bytes still to come before the next prefix.
    remaining: u64,
    /// Messages begun so far (for the access log).
    pub messages: u64,
    /// Body bytes fed so far.
    pub bytes: u64,
}

impl FrameScanner {
    /// Feeds the next piece of the body; `end` marks its last piece.
    pub fn feed(&mut self, mut chunk: &[u8], end: bool, limit: u32) -> Result<(), FrameError> {
        self.bytes += chunk.len() as u64;
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip = (self.remaining.min(chunk.len() as u64)) as usize;
                self.remaining -= skip as u64;
                chunk = &chunk[skip..];
                continue;
            }
            let take = (5 - self.prefix_len).min(chunk.len());
            self.prefix[self.prefix_len..self.prefix_len + take].copy_from_slice(&chunk[..take]);
            self.prefix_len += take;
            chunk = &chunk[take..];
            if self.prefix_len == 5 {
                let length = u32::from_be_bytes([
                    self.prefix[1],
                    self.prefix[2],
                    self.prefix[3],
                    self.prefix[4],
                ]);
                if length > limit {
                    return Err(FrameError::TooLarge { length, limit });
                }
                self.remaining = u64::from(length);
                self.prefix_len = 0;
                self.messages += 1;
            }
        }
        if end && (self.prefix_len > 0 || self.remaining > 0) {
            return Err(FrameError::Truncated);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn whole_messages_in_any_split_pass() {
        let body: Vec<u8> = [message(0), message(10), message(300)].concat();
        for split in 0..body.len() {
            let mut s = FrameScanner::default();
            s.feed(&body[..split], false, 1000).unwrap();
            s.feed(&body[split..], true, 1000).unwrap();
        }
    }

    #[test]
    fn bytes_and_messages_are_counted_across_pieces() {
        let body: Vec<u8> = [message(0), message(10), message(300)].concat();
        let mut s = FrameScanner::default();
        s.feed(&body[..3], false, 1000).unwrap();
        s.feed(&body[3..20], false, 1000).unwrap();
        s.feed(&body[20..], true, 1000).unwrap();
        assert_eq!(s.bytes, body.len() as u64);
        assert_eq!(s.messages, 3);
    }

    #[test]
    fn oversized_message_is_refused_from_its_prefix() {
        let mut s = FrameScanner::default();
        let big = message(2000);
        assert_eq!(
            s.feed(&big[..5], false, 1000),
            Err(FrameError::TooLarge {
                length: 2000,
                limit: 1000
            })
        );
    }

    #[test]
    fn a_message_of_exactly_the_limit_passes() {
        let mut s = FrameScanner::default();
        assert_eq!(s.feed(&message(1000), true, 1000), Ok(()));
        let mut s = FrameScanner::default();
        assert_eq!(
            s.feed(&message(1001), true, 1000),
            Err(FrameError::TooLarge {
                length: 1001,
                limit: 1000
            })
        );
    }

    #[test]
    fn truncated_bodies_are_noticed() {
        let m = message(10);
        for cut in 1..m.len() {
            let mut s = FrameScanner::default();
            assert_eq!(
                s.feed(&m[..cut], true, 1000),
                Err(FrameError::Truncated),
                "cut at {cut}"
            );
        }
        let mut s = FrameScanner::default();
        assert_eq!(s.feed(&[], true, 1000), Ok(()), "an empty body is fine");
    }

    proptest! {
        /// Any sequence of messages under the limit, cut into any pieces, passes; the largest
        /// message decides whether a lower limit refuses it.
        #[test]
        fn scanner_agrees_with_the_messages(
            lens in proptest::collection::vec(0usize..3000, 0..6),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
            limit in 0u32..3000,
        ) {
            let body: Vec<u8> = lens.iter().flat_map(|l| message(*l)).collect();
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(body.len() + 1)).collect();
            points.push(0);
            points.push(body.len());
            points.sort_unstable();
            let mut s = FrameScanner::default();
            let mut result = Ok(());
            for pair in points.windows(2) {
                let end = pair[1] == body.len();
                result = s.feed(&body[pair[0]..pair[1]], end, limit);
                if result.is_err() { break; }
            }
            let too_large = lens.iter().any(|l| *l as u32 > limit);
            prop_assert_eq!(result.is_err(), too_large);
        }
    }
}
