//! `.safetensors` files, validated by the safetensors crate (header JSON, offsets
//! in bounds and contiguous, sizes matching dtype × shape), and the headers of new
//! safetensors files made from a selection of tensors.

use std::collections::BTreeMap;
use std::fs::File;

use anyhow::{Context, Result, ensure};
use safetensors::SafeTensors;
use serde_json::{Map, Value, json};

use super::{Parsed, Tensor};

const LENGTH_PREFIX: u64 = 8;

pub(super) fn parse(file: &File, size: u64) -> Result<Parsed> {
    ensure!(
        size >= LENGTH_PREFIX,
        "too short for a safetensors file ({size} bytes)"
    );
    // The crate validates a file against its full length; a read-only map lets it
    // do that while touching only the header's pages.
    // SAFETY: the map is read-only and dropped before this function returns; a
    // concurrent truncation could fault, which is why data is later read with
    // positioned reads, never through a map.
    let map = unsafe { memmap2::Mmap::map(file) }.context("cannot map the file")?;
    let (header_len, metadata) =
        SafeTensors::read_metadata(&map).map_err(|err| anyhow::anyhow!("{err}"))?;
    let data_start = LENGTH_PREFIX + header_len as u64;
    let header = map[..data_start as usize].to_vec();
    drop(map);

    let mut tensors: Vec<Tensor> = metadata
        .tensors()
        .into_iter()
        .map(|(name, info)| Tensor {
            name,
            dtype: dtype_name(&info.dtype),
            shape: info.shape.iter().map(|&d| d as u64).collect(),
            data: data_start + info.data_offsets.0 as u64..data_start + info.data_offsets.1 as u64,
        })
        .collect();
    tensors.sort_by_key(|t| (t.data.start, t.data.end));
    let metadata = metadata
        .metadata()
        .as_ref()
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect());
    Ok(Parsed {
        header,
        tensors,
        metadata,
        npy: None,
    })
}

fn dtype_name(dtype: &safetensors::Dtype) -> String {
    format!("{dtype:?}")
}

/// Builds the header of a safetensors file from tensors added in data order.
#[derive(Debug, Default)]
pub struct SafetensorsBuilder {
    entries: Map<String, Value>,
    metadata: Option<BTreeMap<String, String>>,
    data_len: u64,
}

impl SafetensorsBuilder {
    pub fn new(metadata: Option<BTreeMap<String, String>>) -> Self {
        SafetensorsBuilder {
            metadata,
            ..Default::default()
        }
    }

    /// Adds a tensor whose `len` data bytes follow the previous tensor's.
    pub fn push(&mut self, name: &str, dtype: &str, shape: &[u64], len: u64) -> Result<()> {
        ensure!(
            !self.entries.contains_key(name) && name != "__metadata__",
            "two selected tensors are named {name:?}; a safetensors file holds each name once"
        );
        let start = self.data_len;
        self.data_len += len;
        self.entries.insert(
            name.to_string(),
            json!({"dtype": dtype, "shape": shape, "data_offsets": [start, self.data_len]}),
        );
        Ok(())
    }

    pub fn data_len(&self) -> u64 {
        self.data_len
    }

    /// The length prefix and JSON header, padded with spaces to a multiple of 8
    /// bytes as the safetensors library writes it.
    pub fn header(&self) -> Vec<u8> {
        let mut object = Map::new();
        if let Some(metadata) = &self.metadata {
            object.insert("__metadata__".into(), json!(metadata));
        }
        object.extend(self.entries.clone());
        let mut text = serde_json::to_vec(&Value::Object(object)).expect("JSON of strings");
        while !text.len().is_multiple_of(8) {
            text.push(b' ');
        }
        let mut header = (text.len() as u64).to_le_bytes().to_vec();
        header.extend_from_slice(&text);
        header
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file_with(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(bytes).unwrap();
        file
    }

    fn parse_bytes(bytes: &[u8]) -> Result<Parsed> {
        let file = file_with(bytes);
        parse(file.as_file(), bytes.len() as u64)
    }

    #[test]
    fn builder_output_is_a_valid_file_with_metadata() {
        let mut builder = SafetensorsBuilder::new(Some(BTreeMap::from([(
            "format".to_string(),
            "pt".to_string(),
        )])));
        builder.push("a.weight", "BF16", &[2, 2], 8).unwrap();
        builder.push("b", "F8_E4M3", &[3], 3).unwrap();
        builder.push("empty", "F32", &[0, 4], 0).unwrap();
        let mut bytes = builder.header();
        bytes.extend_from_slice(&[7; 11]);
        let parsed = parse_bytes(&bytes).unwrap();
        let names: Vec<_> = parsed.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a.weight", "b", "empty"]);
        assert_eq!(parsed.tensors[1].dtype, "F8_E4M3");
        assert_eq!(parsed.metadata.unwrap()["format"], "pt");
        assert!(builder.push("b", "F32", &[1], 4).is_err());
    }

    #[test]
    fn refuses_broken_headers() {
        let text = br#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
        let mut bytes = (text.len() as u64).to_le_bytes().to_vec();
        bytes.extend_from_slice(text);
        bytes.extend_from_slice(&[0; 12]);
        assert!(parse_bytes(&bytes).is_err());
        assert!(parse_bytes(&u64::MAX.to_le_bytes()).is_err());
        assert!(parse_bytes(b"\x02\0\0\0\0\0\0\0{]").is_err());
    }
}
