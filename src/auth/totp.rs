//! Time-based one-time passwords (RFC 6238 over RFC 4226): HMAC-SHA-1,
//! 30-second steps, 6 digits, what every authenticator app does by
//! default. Secrets are 160 random bits, exchanged in base32 (RFC 4648,
//! no padding) inside an `otpauth://` URI.

use hmac::{Hmac, KeyInit, Mac};
use rand::RngCore;

pub const STEP_SECS: i64 = 30;
pub const DIGITS: u32 = 6;
/// Steps accepted either side of the current one (clock drift).
const WINDOW: i64 = 1;

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A new secret, base32.
pub fn generate_secret() -> String {
    let mut secret = [0u8; 20];
    rand::rng().fill_bytes(&mut secret);
    base32_encode(&secret)
}

/// The `otpauth://` URI an authenticator app scans.
pub fn otpauth_uri(secret: &str, account: &str, issuer: &str) -> String {
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    let enc = |s: &str| utf8_percent_encode(s, NON_ALPHANUMERIC).to_string();
    format!(
        "otpauth://totp/{}:{}?secret={secret}&issuer={}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        enc(issuer),
        enc(account),
        enc(issuer)
    )
}

/// The time step of a Unix time.
pub fn step_of(unix_secs: i64) -> i64 {
    unix_secs.div_euclid(STEP_SECS)
}

/// The HOTP value (RFC 4226 §5.3) of `key` at `counter`, with `digits`.
pub fn hotp(key: &[u8], counter: u64, digits: u32) -> u32 {
    let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(key) else {
        return u32::MAX; // HMAC takes keys of any length; never reached
    };
    mac.update(&counter.to_be_bytes());
    let h = mac.finalize().into_bytes();
    let offset = usize::from(h[h.len() - 1] & 0x0f);
    let bin = u32::from_be_bytes([
        h[offset] & 0x7f,
        h[offset + 1],
        h[offset + 2],
        h[offset + 3],
    ]);
    bin % 10u32.pow(digits)
}

/// The 6-digit code of a base32 secret at a Unix time (for tests and
/// tools; the server only verifies).
pub fn code_at(secret: &str, unix_secs: i64) -> Option<String> {
    let key = base32_decode(secret)?;
    let step = u64::try_from(step_of(unix_secs)).ok()?;
    Some(format!("{:06}", hotp(&key, step, DIGITS)))
}

/// The time step `code` is valid for at `unix_secs` (± one step), if any.
/// The caller must refuse a step already used (replay).
pub fn verify(secret: &str, code: &str, unix_secs: i64) -> Option<i64> {
    let code = code.trim();
    if code.len() != DIGITS as usize || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let want: u32 = code.parse().ok()?;
    let key = base32_decode(secret)?;
    let now = step_of(unix_secs);
    (now - WINDOW..=now + WINDOW)
        .find(|&step| u64::try_from(step).is_ok_and(|c| hotp(&key, c, DIGITS) == want))
}

pub fn base32_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &b in bytes {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// Decode base32 (case-insensitive; spaces and `=` padding ignored).
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 5 / 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes().filter(|c| !matches!(c, b' ' | b'=' | b'-')) {
        let v = ALPHABET.iter().position(|&a| a == c.to_ascii_uppercase())? as u32;
        buffer = (buffer << 5) | v;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    (!out.is_empty()).then_some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 rows: the 8-digit codes of the ASCII
    /// secret "12345678901234567890".
    #[test]
    fn rfc6238_test_vectors() {
        let key = b"12345678901234567890";
        for (time, code) in [
            (59i64, 94287082u32),
            (1111111109, 7081804),
            (1111111111, 14050471),
            (1234567890, 89005924),
            (2000000000, 69279037),
            (20000000000, 65353130),
        ] {
            assert_eq!(hotp(key, step_of(time) as u64, 8), code, "T={time}");
            // 6 digits are the last six of the 8.
            let secret = base32_encode(key);
            assert_eq!(
                code_at(&secret, time).unwrap(),
                format!("{:06}", code % 1_000_000)
            );
            assert_eq!(
                verify(&secret, &format!("{:06}", code % 1_000_000), time),
                Some(step_of(time))
            );
        }
    }

    #[test]
    fn codes_are_valid_one_step_either_side_only() {
        let secret = "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"; // base32 of "12345678901234567890"
        assert_eq!(base32_decode(secret).unwrap(), b"12345678901234567890");
        let t = 1_111_111_111;
        let code = code_at(secret, t).unwrap();
        assert_eq!(verify(secret, &code, t + 30), Some(step_of(t)));
        assert_eq!(verify(secret, &code, t - 30), Some(step_of(t)));
        assert_eq!(verify(secret, &code, t + 90), None);
        assert_eq!(verify(secret, "12345", t), None);
        assert_eq!(verify(secret, "abcdef", t), None);
    }

    #[test]
    fn base32_round_trips() {
        for len in 0..25 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let text = base32_encode(&bytes);
            if len > 0 {
                assert_eq!(base32_decode(&text).unwrap(), bytes);
                assert_eq!(base32_decode(&text.to_lowercase()).unwrap(), bytes);
            }
        }
        assert_eq!(base32_decode("not base32!"), None);
        assert_eq!(generate_secret().len(), 32);
    }
}
