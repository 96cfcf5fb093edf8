//! sha256 digests in lowercase hex: of files (every artifact's checksum, OCI blobs, image layers)
//! and of readers (a layer's decompressed content).

use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

/// `bytes` in lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The sha256 of everything `reader` yields, in hex.
pub fn sha256_reader(mut reader: impl Read) -> io::Result<String> {
    let mut h = Sha256::new();
    io::copy(&mut reader, &mut h)?;
    Ok(hex(&h.finalize()))
}

/// The sha256 of a file, in hex.
pub fn sha256_file(path: &Path) -> io::Result<String> {
    sha256_reader(std::fs::File::open(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_of_nothing_is_sha256s_empty_string() {
        assert_eq!(
            sha256_reader(&b""[..]).unwrap(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
