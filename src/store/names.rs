//! Names from the network, reduced to safe paths under the output directory.

use std::path::PathBuf;

use anyhow::{Result, ensure};

use crate::formats::Format;
use crate::protocol::errors::ErrorCode;
use crate::protocol::wire::Offer;

const MAX_COMPONENT_BYTES: usize = 200;

/// Reduces a name from the network to a relative path of one or two plain
/// components (`file` or `dir/file`), or says why it cannot be used.
pub fn safe_name(name: &str) -> Result<PathBuf> {
    ensure!(
        !name.chars().any(crate::escape::is_unprintable),
        "name {name:?} holds control characters"
    );
    ensure!(!name.starts_with('/'), "name {name:?} is an absolute path");
    ensure!(
        !name.contains('\\'),
        "name {name:?} holds a backslash; directories are separated by /"
    );
    let parts: Vec<&str> = name
        .split('/')
        .filter(|part| !part.is_empty() && *part != ".")
        .collect();
    ensure!(!parts.is_empty(), "name {name:?} is empty");
    ensure!(
        parts.len() <= 2,
        "name {name:?} has more than one directory level"
    );
    for part in &parts {
        ensure!(*part != "..", "name {name:?} climbs out of the directory");
        ensure!(
            !part.starts_with('.'),
            "name {name:?} would be a hidden file"
        );
        ensure!(
            part.len() <= MAX_COMPONENT_BYTES,
            "name {name:?} is too long"
        );
    }
    ensure!(
        Format::from_name(parts[parts.len() - 1]).is_some(),
        "name {name:?} is not a .npy, .safetensors or .safetensors.index.json file"
    );
    Ok(parts.iter().collect())
}

/// The offered file's path under the store, once its name is safe and fits its
/// content, and its identity (which goes into the partial file's name) is hex.
pub(super) fn target_of(offer: &Offer) -> Result<PathBuf> {
    // Each reason is one message, naming nothing but the offered name.
    let target = safe_name(&offer.name).map_err(|err| ErrorCode::BadName.error(err.to_string()))?;
    let named = Format::from_name(&offer.name).map(Format::as_str);
    ensure!(
        named == Some(offer.format.as_str()),
        ErrorCode::BadName.error(format!(
            "name {:?} does not fit its {} content",
            offer.name, offer.format
        ))
    );
    ensure!(
        offer.identity.len() <= 64 && offer.identity.chars().all(|c| c.is_ascii_hexdigit()),
        ErrorCode::ProtocolViolation.error("malformed file identity")
    );
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_cannot_escape() {
        assert_eq!(safe_name("a.npy").unwrap(), PathBuf::from("a.npy"));
        assert_eq!(
            safe_name("ckpt/model-1.safetensors").unwrap(),
            PathBuf::from("ckpt/model-1.safetensors")
        );
        assert_eq!(safe_name("./a//b.npy").unwrap(), PathBuf::from("a/b.npy"));
        for bad in [
            "/etc/x.npy",
            "a\\b.npy",
            "..\\x.npy",
            "../x.npy",
            "a/../../x.npy",
            "a/b/c.npy",
            ".hidden.npy",
            "x\n.npy",
            "passwd",
            "",
            "..",
        ] {
            assert!(safe_name(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
