//! Reading one segment's records back at start, and resynchronising past damage.
//! Pure: bytes in, records and an exact report of what was lost out; `log.rs`
//! does the files (copy aside, repair).
//!
//! A damaged record costs that record, not the rest of its segment: from the
//! first bad byte the scan looks, byte by byte, for the next record whose frame
//! (length, kind, CRC under the segment's salt), body and sequence check out, and
//! goes on from there. Why a false resynchronisation point cannot be accepted is
//! written down in ARCHITECTURE.md (Storage, Recovery): in short, format 2 mixes a
//! random per-segment salt into every CRC, so a record a peer hid in a payload
//! fails it, and the sequence must lie in the window the skipped bytes allow.

use super::record::{self, Bad, Op, MAX_KIND, MAX_RECORD, MIN_RECORD, PAD};
use crate::clock::Clock;

/// What one segment held.
pub struct Scanned {
    /// Every intact record, in order, with its offset in the segment and its
    /// length on disk.
    pub records: Vec<(Op, usize, usize)>,
    pub damage: Vec<Damage>,
    /// The sequence that follows this segment.
    pub next_seq: u64,
    /// Where reading stopped: the end of the records when there was no damage.
    pub end: usize,
}

/// One damaged region and the records it cost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// The first damaged byte.
    pub from: usize,
    /// Where reading resumed, or (nothing readable after `from`) one past the
    /// last nonzero byte.
    pub to: usize,
    pub why: Bad,
    /// The first sequence lost.
    pub first_lost: u64,
    /// The sequence reading resumed at, so `first_lost..resumed` were lost. None
    /// when nothing after `from` could be read and no later segment says where
    /// the sequence went on (the number lost is then unknown).
    pub resumed: Option<u64>,
}

impl Damage {
    /// How many records were lost, when known.
    pub fn lost(&self) -> Option<u64> {
        self.resumed.map(|r| r.saturating_sub(self.first_lost))
    }
}

/// One past the last nonzero byte of `data[from..]` (`from` if all are zero).
pub fn data_end(data: &[u8], from: usize) -> usize {
    data.get(from..)
        .and_then(|d| d.iter().rposition(|&b| b != 0))
        .map_or(from, |i| from + i + 1)
}

/// Read `data` (a whole segment file) from `start`, the first record carrying
/// `first_seq`. `next_first` is the first sequence of the next segment, when
/// there is one: a sealed segment's records end exactly before it, which catches
/// records lost at its end (a zeroed tail reads like the unused preallocation).
pub fn scan(
    data: &[u8],
    start: usize,
    first_seq: u64,
    salt: Option<u64>,
    next_first: Option<u64>,
    clock: Clock,
) -> Scanned {
    let mut out = Scanned {
        records: Vec::new(),
        damage: Vec::new(),
        next_seq: first_seq,
        end: start,
    };
    // Bytes the resynchronisation may checksum for this segment: a crafted
    // segment must not turn recovery quadratic.
    let mut budget = data.len().saturating_mul(16).saturating_add(1 << 20);
    let mut off = start;
    let mut want = first_seq;
    loop {
        let rest = data.get(off..).unwrap_or(&[]);
        let why = match record::frame(rest, salt) {
            Ok(f) if f.seq == want => match read(f.kind, f.body, f.seq, clock) {
                Ok(Some(op)) => {
                    out.records.push((op, off, f.len));
                    off += f.len;
                    want += 1;
                    continue;
                }
                Ok(None) => {
                    // Padding over an earlier, already reported damage.
                    want = record::pad_next(f.body).unwrap_or(want);
                    off += f.len;
                    continue;
                }
                Err(e) => e,
            },
            Ok(f) => Bad::Sequence { got: f.seq, want },
            Err(Bad::End) => {
                if data_end(data, off) > off {
                    // Eight zero bytes where a record should start, with data
                    // after them: damage, not the end.
                    Bad::Zeroed
                } else {
                    if let Some(n) = next_first.filter(|&n| n > want) {
                        out.damage.push(Damage {
                            from: off,
                            to: off,
                            why: Bad::Missing,
                            first_lost: want,
                            resumed: Some(n),
                        });
                        want = n;
                    }
                    break;
                }
            }
            Err(e) => e,
        };
        match resync(data, off, want, salt, clock, &mut budget) {
            Some((at, seq)) => {
                out.damage.push(Damage {
                    from: off,
                    to: at,
                    why,
                    first_lost: want,
                    resumed: Some(seq),
                });
                off = at;
                want = seq;
            }
            None => {
                let resumed = next_first.filter(|&n| n >= want);
                out.damage.push(Damage {
                    from: off,
                    to: data_end(data, off).min(data.len()),
                    why,
                    first_lost: want,
                    resumed,
                });
                want = resumed.unwrap_or(want);
                break;
            }
        }
    }
    out.next_seq = want;
    out.end = off;
    out
}

/// The op of a record whose frame checked out; None for padding.
fn read(kind: u8, body: &[u8], seq: u64, clock: Clock) -> Result<Option<Op>, Bad> {
    if kind == PAD {
        return match record::pad_next(body) {
            Ok(n) if n >= seq => Ok(None),
            _ => Err(Bad::Body("padding")),
        };
    }
    record::decode_body(kind, body, clock).map(Some)
}

/// The next offset after `from` where a whole, valid record with a plausible
/// sequence starts, and that sequence.
fn resync(
    data: &[u8],
    from: usize,
    want: u64,
    salt: Option<u64>,
    clock: Clock,
    budget: &mut usize,
) -> Option<(usize, u64)> {
    let last = data.len().checked_sub(MIN_RECORD)?;
    for at in from + 1..=last {
        // INVARIANT: `at <= last`, so `b` holds at least MIN_RECORD (18) bytes:
        // the header reads below are in bounds.
        let b = &data[at..];
        // Cheap checks first; the CRC only for what passes them.
        let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
        if !(9..=MAX_RECORD).contains(&len) || 8 + len > b.len() || b[8] > MAX_KIND {
            continue;
        }
        let mut s = [0u8; 8];
        s.copy_from_slice(&b[9..17]);
        let seq = u64::from_le_bytes(s);
        // Every lost record took at least MIN_RECORD of the skipped bytes.
        let most = want.saturating_add(((at - from) / MIN_RECORD) as u64);
        if seq < want || seq > most {
            continue;
        }
        if *budget < len {
            return None;
        }
        *budget -= len;
        let Ok(f) = record::frame(b, salt) else {
            continue;
        };
        if read(f.kind, f.body, f.seq, clock).is_err() {
            continue;
        }
        // Format 1 has no salt: a record copied into a payload would pass its
        // CRC, so the one after the candidate must continue the sequence too.
        if salt.is_none() && !continues(data, at + f.len, f.seq + 1) {
            continue;
        }
        return Some((at, seq));
    }
    None
}

/// Does the record at `at` carry `seq` (or is the written data over there)?
fn continues(data: &[u8], at: usize, seq: u64) -> bool {
    let rest = data.get(at..).unwrap_or(&[]);
    match record::frame(rest, None) {
        Ok(f) => f.seq == seq,
        Err(Bad::End) => data_end(data, at) <= at,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::session::Message;
    use std::sync::Arc;

    const SALT: Option<u64> = Some(0x5eed_1234_abcd_0042);
    const START: usize = 40;

    fn clock() -> Clock {
        Clock::read()
    }

    fn retain(i: usize, payload: Vec<u8>) -> Op {
        Op::Retain {
            message: Arc::new(Message {
                topic: Arc::from(format!("t/{i}")),
                payload: payload.into(),
                qos: crate::protocol::QoS::AtLeastOnce,
                retain: true,
                properties: Default::default(),
                received: clock().now,
            }),
        }
    }

    /// A segment of `n` retained records from sequence 100; returns the bytes and
    /// each record's offset.
    fn segment(n: usize, salt: Option<u64>) -> (Vec<u8>, Vec<usize>) {
        let c = clock();
        let mut b = vec![0xAA; START];
        let mut offs = Vec::new();
        for i in 0..n {
            offs.push(b.len());
            let op = retain(
                i,
                format!("payload {i} {}", "x".repeat(i % 13)).into_bytes(),
            );
            record::encode_salted(&op, 100 + i as u64, salt, c, &mut b);
        }
        b.resize(b.len() + 4096, 0);
        (b, offs)
    }

    fn topics(s: &Scanned) -> Vec<String> {
        s.records
            .iter()
            .map(|(op, _, _)| match op {
                Op::Retain { message } => message.topic.to_string(),
                _ => panic!("unexpected {op:?}"),
            })
            .collect()
    }

    fn all_but(n: usize, lost: &[usize]) -> Vec<String> {
        (0..n)
            .filter(|i| !lost.contains(i))
            .map(|i| format!("t/{i}"))
            .collect()
    }

    #[test]
    fn intact_segment_reads_whole() {
        let (b, _) = segment(50, SALT);
        let s = scan(&b, START, 100, SALT, Some(150), clock());
        assert_eq!(topics(&s), all_but(50, &[]));
        assert!(s.damage.is_empty());
        assert_eq!(s.next_seq, 150);
    }

    #[test]
    fn one_flipped_byte_costs_one_record() {
        for salt in [SALT, None] {
            for k in [0, 1, 17, 48, 49] {
                let (mut b, offs) = segment(50, salt);
                for pos in [
                    offs[k],
                    offs[k] + 3,
                    offs[k] + 6,
                    offs[k] + 12,
                    offs[k] + 25,
                ] {
                    let mut d = b.clone();
                    d[pos] ^= 0x10;
                    let s = scan(&d, START, 100, salt, Some(150), clock());
                    assert_eq!(
                        topics(&s),
                        all_but(50, &[k]),
                        "salt {salt:?} k {k} pos {pos}"
                    );
                    assert_eq!(s.damage.len(), 1);
                    assert_eq!(s.damage[0].first_lost, 100 + k as u64);
                    assert_eq!(s.damage[0].lost(), Some(1));
                    assert_eq!(s.next_seq, 150);
                }
                b.clear();
            }
        }
    }

    #[test]
    fn zeroed_boundary_costs_one_record() {
        let (b, offs) = segment(300, SALT);
        let mut d = b.clone();
        d[offs[143]..offs[143] + 8].fill(0);
        let s = scan(&d, START, 100, SALT, Some(400), clock());
        assert_eq!(topics(&s), all_but(300, &[143]));
        assert_eq!(s.damage[0].why, Bad::Zeroed);
        assert_eq!(s.damage[0].lost(), Some(1));
    }

    #[test]
    fn zeroed_tail_of_a_sealed_segment_is_reported() {
        let (b, offs) = segment(20, SALT);
        let mut d = b.clone();
        d[offs[17]..].fill(0);
        let s = scan(&d, START, 100, SALT, Some(120), clock());
        assert_eq!(topics(&s), all_but(20, &[17, 18, 19]));
        assert_eq!(s.damage[0].why, Bad::Missing);
        assert_eq!((s.damage[0].first_lost, s.damage[0].lost()), (117, Some(3)));
        assert_eq!(s.next_seq, 120);
        // The newest segment has no successor: its zeroed tail is its end.
        let s = scan(&d, START, 100, SALT, None, clock());
        assert!(s.damage.is_empty());
        assert_eq!(s.next_seq, 117);
    }

    #[test]
    fn garbage_tail_is_dropped_and_bounded() {
        let (b, offs) = segment(20, SALT);
        let mut d = b.clone();
        let end = data_end(&d, 0);
        for x in &mut d[offs[19] + 5..end + 100] {
            *x = 0x5a;
        }
        let s = scan(&d, START, 100, SALT, None, clock());
        assert_eq!(topics(&s), all_but(20, &[19]));
        assert_eq!(s.damage[0].from, offs[19]);
        assert_eq!(s.damage[0].to, end + 100);
        assert_eq!(s.damage[0].resumed, None);
    }

    /// A peer can put the bytes of a whole valid record into a payload. Format 2
    /// never takes it for a record: the peer cannot know the salt.
    #[test]
    fn a_record_hidden_in_a_payload_is_never_taken_for_one() {
        let c = clock();
        // The hidden record claims the sequence the real one after it would have.
        let mut hidden = Vec::new();
        let evil = Op::SessionGone { sid: 7 };
        for salt in [None, Some(1), Some(0x5eed_1234_abcd_0041)] {
            for seq in 100..104 {
                record::encode_salted(&evil, seq, salt, c, &mut hidden);
            }
        }
        let mut b = vec![0xAA; START];
        record::encode_salted(&retain(0, b"first".to_vec()), 100, SALT, c, &mut b);
        let carrier = b.len();
        record::encode_salted(&retain(1, hidden.clone()), 101, SALT, c, &mut b);
        record::encode_salted(&retain(2, b"third".to_vec()), 102, SALT, c, &mut b);
        b.resize(b.len() + 512, 0);
        b[carrier + 5] ^= 1; // damage the carrier's CRC
        let s = scan(&b, START, 100, SALT, Some(103), clock());
        assert_eq!(topics(&s), vec!["t/0", "t/2"]);
        assert_eq!(s.damage[0].lost(), Some(1));
    }

    #[test]
    fn padding_skips_reported_damage() {
        let (b, offs) = segment(30, SALT);
        let mut d = b.clone();
        d[offs[10] + 20] ^= 0xff;
        d[offs[11] + 2] ^= 0xff;
        let s = scan(&d, START, 100, SALT, Some(130), clock());
        assert_eq!(topics(&s), all_but(30, &[10, 11]));
        let dmg = &s.damage[0];
        assert_eq!((dmg.first_lost, dmg.lost()), (110, Some(2)));
        let p = record::pad(110, 112, dmg.to - dmg.from, SALT).unwrap();
        d[dmg.from..dmg.to].copy_from_slice(&p);
        let again = scan(&d, START, 100, SALT, Some(130), clock());
        assert_eq!(topics(&again), all_but(30, &[10, 11]));
        assert!(again.damage.is_empty());
    }

    #[test]
    fn random_damage_never_yields_garbage() {
        let (b, offs) = segment(200, SALT);
        let mut x = 0x1234_5678_9abc_def0u64;
        for _ in 0..200 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut d = b.clone();
            let at = START + (x % (offs[199] as u64 - START as u64)) as usize;
            let n = 1 + (x >> 20) as usize % 64;
            for (i, v) in d[at..at + n].iter_mut().enumerate() {
                *v = (x >> (i % 8)) as u8;
            }
            let s = scan(&d, START, 100, SALT, Some(300), clock());
            let got = topics(&s);
            let lost: u64 = s.damage.iter().filter_map(|d| d.lost()).sum();
            assert_eq!(got.len() as u64 + lost, 200, "damage at {at}+{n}");
            // Only records overlapping the damage are lost.
            for (i, &o) in offs.iter().enumerate() {
                let end = offs.get(i + 1).copied().unwrap_or(data_end(&b, 0));
                if end <= at || o >= at + n {
                    assert!(
                        got.contains(&format!("t/{i}")),
                        "t/{i} lost for damage at {at}+{n}"
                    );
                }
            }
        }
    }
}
