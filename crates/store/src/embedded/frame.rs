//! Framing of everything written to disk: `length: u32 LE | crc32: u32 LE | body`.
//!
//! The checksum covers the length as well as the body, so a damaged length is caught like a
//! damaged body instead of sending the reader to a wrong place.

use std::io;

const HEADER_LEN: usize = 8;

/// `body` framed: header, then the body itself.
pub fn encode(body: &[u8]) -> io::Result<Vec<u8>> {
    let len = u32::try_from(body.len())
        .map_err(|_| io::Error::other("a record larger than 4 GiB cannot be framed"))?
        .to_le_bytes();
    let mut frame = Vec::with_capacity(HEADER_LEN + body.len());
    frame.extend_from_slice(&len);
    frame.extend_from_slice(&checksum(len, body).to_le_bytes());
    frame.extend_from_slice(body);
    Ok(frame)
}

/// The body of the frame at the start of `bytes`, and the length of the whole frame; or why
/// there is no valid frame there.
pub fn decode(bytes: &[u8]) -> Result<(&[u8], usize), &'static str> {
    let Some(&[l0, l1, l2, l3, c0, c1, c2, c3]) = bytes.first_chunk::<HEADER_LEN>() else {
        return Err("incomplete header");
    };
    let (len, crc) = ([l0, l1, l2, l3], [c0, c1, c2, c3]);
    let end = usize::try_from(u32::from_le_bytes(len))
        .ok()
        .and_then(|body_len| body_len.checked_add(HEADER_LEN))
        .ok_or("length out of range")?;
    let body = bytes
        .get(HEADER_LEN..end)
        .ok_or("length runs past the end of the file")?;
    if body.is_empty() {
        // Zeroes, as a file system may leave after a crash, would otherwise frame an empty
        // body with a matching checksum.
        return Err("empty record");
    }
    if checksum(len, body) != u32::from_le_bytes(crc) {
        return Err("checksum mismatch");
    }
    Ok((body, end))
}

fn checksum(len: [u8; 4], body: &[u8]) -> u32 {
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&len);
    hasher.update(body);
    hasher.finalize()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_frame_reads_back_and_any_damage_is_caught() {
        let mut bytes = encode(b"{\"a\":1}").unwrap();
        bytes.extend_from_slice(b"next");
        assert_eq!(decode(&bytes), Ok((&b"{\"a\":1}"[..], 15)));

        for at in 0..15 {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0x40;
            assert!(decode(&damaged).is_err(), "a flipped bit at byte {at}");
        }
        assert_eq!(
            decode(&bytes[..14]),
            Err("length runs past the end of the file")
        );
        assert_eq!(decode(&bytes[..5]), Err("incomplete header"));
        assert_eq!(decode(&[0; 64]), Err("empty record"));
    }
}
