//! Mutations of one input: byte-level changes, splices with other corpus
//! entries, interesting values and a target's dictionary tokens, stacked a
//! few at a time. Deterministic for a given [`fastrand::Rng`] seed.

use fastrand::Rng;

/// Numbers that break parsers: bounds of integer types, floats JSON cannot
/// hold, signs and exponents.
const INTERESTING: &[&[u8]] = &[
    b"0",
    b"-0",
    b"1",
    b"-1",
    b"0.5",
    b"1.0",
    b"1.0000000000000002",
    b"1e400",
    b"-1e400",
    b"1e-400",
    b"127",
    b"128",
    b"255",
    b"256",
    b"65535",
    b"65536",
    b"2147483647",
    b"2147483648",
    b"4294967295",
    b"4294967296",
    b"9223372036854775807",
    b"9223372036854775808",
    b"-9223372036854775808",
    b"-9223372036854775809",
    b"18446744073709551615",
    b"18446744073709551616",
    b"999999999999999999",
    b"100000",
    b"100001",
    b"NaN",
    b"Infinity",
    b"null",
    b"true",
    b"false",
];

/// Bytes that end strings, lines and encodings.
const INTERESTING_BYTES: &[u8] =
    &[0x00, 0x01, 0x09, 0x0a, 0x0d, 0x20, 0x22, 0x5c, 0x7f, 0x80, 0xc0, 0xef, 0xff];

/// Characters whose UTF-8 spans several bytes, and a byte-order mark.
const UNICODE: &[&str] =
    &["\u{feff}", "é", "€", "\u{2028}", "\u{0085}", "\u{00a0}", "😀", "\u{10ffff}", "\u{200b}"];

/// A mutator over a target's dictionary.
#[derive(Debug)]
pub struct Mutator {
    rng: Rng,
    dictionary: Vec<Vec<u8>>,
    max_len: usize,
}

impl Mutator {
    pub fn new(seed: u64, dictionary: Vec<Vec<u8>>, max_len: usize) -> Self {
        Self { rng: Rng::with_seed(seed), dictionary, max_len }
    }

    pub fn rng(&mut self) -> &mut Rng {
        &mut self.rng
    }

    /// A mutant of `base`: 1 to 16 stacked mutations (fewer more often),
    /// `others` supplying splices. Never longer than the target's limit.
    pub fn mutate(&mut self, base: &[u8], others: &[Vec<u8>], out: &mut Vec<u8>) {
        out.clear();
        out.extend_from_slice(base);
        let rounds = 1 << self.rng.u32(0..5);
        for _ in 0..self.rng.u32(1..=rounds) {
            self.once(out, others);
        }
        out.truncate(self.max_len);
    }

    fn pos(&mut self, data: &[u8]) -> usize {
        self.rng.usize(0..=data.len())
    }

    /// A range of `data`, usually short.
    fn range(&mut self, data: &[u8]) -> (usize, usize) {
        if data.is_empty() {
            return (0, 0);
        }
        let start = self.rng.usize(0..data.len());
        let longest = data.len() - start;
        let len =
            if self.rng.bool() { self.rng.usize(1..=longest.min(8)) } else { self.rng.usize(1..=longest) };
        (start, start + len)
    }

    fn token(&mut self) -> Vec<u8> {
        match self.rng.u8(0..10) {
            0..=5 if !self.dictionary.is_empty() => {
                self.dictionary[self.rng.usize(0..self.dictionary.len())].clone()
            }
            6 | 7 => INTERESTING[self.rng.usize(0..INTERESTING.len())].to_vec(),
            8 => UNICODE[self.rng.usize(0..UNICODE.len())].as_bytes().to_vec(),
            _ => vec![INTERESTING_BYTES[self.rng.usize(0..INTERESTING_BYTES.len())]],
        }
    }

    fn once(&mut self, data: &mut Vec<u8>, others: &[Vec<u8>]) {
        match self.rng.u8(0..14) {
            // Flip one bit.
            0 if !data.is_empty() => {
                let i = self.rng.usize(0..data.len());
                data[i] ^= 1 << self.rng.u8(0..8);
            }
            // Set one byte, to anything or to a byte that matters.
            1 if !data.is_empty() => {
                let i = self.rng.usize(0..data.len());
                data[i] = if self.rng.bool() {
                    self.rng.u8(..)
                } else {
                    INTERESTING_BYTES[self.rng.usize(0..INTERESTING_BYTES.len())]
                };
            }
            // Insert a few random bytes.
            2 => {
                let at = self.pos(data);
                let n = self.rng.usize(1..=4);
                let bytes: Vec<u8> = (0..n).map(|_| self.rng.u8(..)).collect();
                data.splice(at..at, bytes);
            }
            // Delete a range.
            3 | 4 if !data.is_empty() => {
                let (a, b) = self.range(data);
                data.drain(a..b);
            }
            // Duplicate a range, once or many times (long lists, many lines).
            5 if !data.is_empty() => {
                let (a, b) = self.range(data);
                let piece = data[a..b].to_vec();
                let times = if self.rng.u8(0..4) == 0 { self.rng.usize(2..=256) } else { 1 };
                let at = self.pos(data);
                let room = self.max_len.saturating_sub(data.len());
                let copies: Vec<u8> =
                    piece.iter().copied().cycle().take((piece.len() * times).min(room)).collect();
                data.splice(at..at, copies);
            }
            // Insert a token (the dictionary, an interesting number, a
            // multi-byte character).
            6..=8 => {
                let t = self.token();
                let at = self.pos(data);
                data.splice(at..at, t);
            }
            // Overwrite a range with a token.
            9 if !data.is_empty() => {
                let t = self.token();
                let (a, b) = self.range(data);
                data.splice(a..b, t);
            }
            // Replace a run of digits with an interesting number.
            10 => {
                let digits: Vec<usize> = (0..data.len()).filter(|&i| data[i].is_ascii_digit()).collect();
                if let Some(&i) = digits.get(self.rng.usize(0..digits.len().max(1))) {
                    let end = (i..data.len()).find(|&j| !data[j].is_ascii_digit()).unwrap_or(data.len());
                    let n = INTERESTING[self.rng.usize(0..INTERESTING.len())];
                    data.splice(i..end, n.iter().copied());
                }
            }
            // Splice: our head with another entry's tail, or a piece of
            // another entry inserted here.
            11 | 12 if !others.is_empty() => {
                let other = &others[self.rng.usize(0..others.len())];
                if self.rng.bool() {
                    let cut = self.pos(data);
                    let from = self.rng.usize(0..=other.len());
                    data.truncate(cut);
                    data.extend_from_slice(&other[from..]);
                } else {
                    let (a, b) = self.range(other);
                    let at = self.pos(data);
                    data.splice(at..at, other[a..b].iter().copied());
                }
            }
            // Swap two bytes' neighbourhoods: reorders fields and lines.
            13 if data.len() >= 2 => {
                let (a, b) = self.range(data);
                let piece: Vec<u8> = data.drain(a..b).collect();
                let at = self.pos(data);
                data.splice(at..at, piece);
            }
            _ => {
                let t = self.token();
                data.extend_from_slice(&t);
            }
        }
        if data.len() > self.max_len {
            data.truncate(self.max_len);
        }
    }
}

/// A dictionary file: one token a line, in double quotes, with `\"`,
/// `\\`, `\n`, `\r`, `\t` and `\xNN` escapes (AFL's and libFuzzer's
/// format without names); blank lines and lines starting with `#` are
/// skipped. A line that is not a token is an error, with its number.
pub fn dictionary(text: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("line {}: not a quoted token: {line}", n + 1);
        let inner = line.strip_prefix('"').and_then(|l| l.strip_suffix('"')).ok_or_else(bad)?;
        let mut token = Vec::new();
        let mut bytes = inner.bytes();
        while let Some(b) = bytes.next() {
            if b != b'\\' {
                token.push(b);
                continue;
            }
            token.push(match bytes.next().ok_or_else(bad)? {
                b'n' => b'\n',
                b'r' => b'\r',
                b't' => b'\t',
                b'x' => {
                    let hex = [bytes.next().ok_or_else(bad)?, bytes.next().ok_or_else(bad)?];
                    let hex = std::str::from_utf8(&hex).map_err(|_| bad())?;
                    u8::from_str_radix(hex, 16).map_err(|_| bad())?
                }
                other => other,
            });
        }
        out.push(token);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutation_is_deterministic_and_bounded() {
        let dict = vec![b"data: ".to_vec(), b"\n\n".to_vec()];
        let others = vec![b"other entry".to_vec()];
        let run = |seed| {
            let mut m = Mutator::new(seed, dict.clone(), 64);
            let mut out = Vec::new();
            let mut all = Vec::new();
            for _ in 0..500 {
                m.mutate(b"data: {\"a\":1}\n\n", &others, &mut out);
                assert!(out.len() <= 64);
                all.push(out.clone());
            }
            all
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));
        assert!(run(7).iter().any(|m| m.as_slice() != b"data: {\"a\":1}\n\n"));
    }

    #[test]
    fn dictionaries_read_quoted_tokens_with_escapes() {
        let d = dictionary("# a comment\n\n\"t=\"\n  \"\\\"a\\\\\\n\\xef\\xBB\"  \n").unwrap();
        assert_eq!(d, [b"t=".to_vec(), b"\"a\\\n\xef\xbb".to_vec()]);
        assert!(dictionary("t=").unwrap_err().contains("line 1"));
        assert!(dictionary("\"\\x4\"").is_err());
    }
}
