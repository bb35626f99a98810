//! API keys: 256-bit random secrets, shown once, stored as SHA-256 hashes
//! (the secret's entropy makes a slow hash unnecessary), compared in
//! constant time. The key string is `cpk_<keyId>_<secret>`: the key id
//! finds the row, the secret proves possession.

use rand::RngCore;

const PREFIX: &str = "cpk_";

/// A freshly generated key: `key` is shown once, `hash` is stored.
pub struct NewKey {
    pub key_id: String,
    pub key: String,
    pub hash: String,
}

pub fn generate() -> NewKey {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut id);
    rand::rng().fill_bytes(&mut secret);
    let key_id = format!("key_{}", hex::encode(id));
    let secret = hex::encode(secret);
    NewKey {
        key: format!("{PREFIX}{key_id}_{secret}"),
        hash: hash(&secret),
        key_id,
    }
}

/// Whether a presented credential looks like an API key (not a JWT).
pub fn is_api_key(presented: &str) -> bool {
    presented.starts_with(PREFIX)
}

/// Split a presented key into (key id, secret).
pub fn parse(presented: &str) -> Option<(&str, &str)> {
    let rest = presented.strip_prefix(PREFIX)?;
    // key_<16 hex>_<64 hex>
    let (id, secret) = rest.rsplit_once('_')?;
    (id.starts_with("key_") && id.len() == 20 && secret.len() == 64).then_some((id, secret))
}

pub fn hash(secret: &str) -> String {
    hex::encode(aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA256,
        secret.as_bytes(),
    ))
}

/// Constant-time comparison of the presented secret's hash with the stored one.
pub fn verify(secret: &str, stored_hash: &str) -> bool {
    let a = hash(secret);
    let (a, b) = (a.as_bytes(), stored_hash.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_parse_and_verify() {
        let k = generate();
        let (id, secret) = parse(&k.key).expect("parses");
        assert_eq!(id, k.key_id);
        assert!(verify(secret, &k.hash));
        assert!(!verify("0".repeat(64).as_str(), &k.hash));
        assert!(is_api_key(&k.key));
        assert_eq!(parse("cpk_key_123_abc"), None);
        assert_ne!(generate().key, generate().key);
    }
}
