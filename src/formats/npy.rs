//! `.npy` files: versions 1.0, 2.0 and 3.0. The header's Python literal is parsed
//! by npyz; this module bounds it, decides which dtypes we carry, and checks the
//! data length against the shape.

use std::fs::File;

use anyhow::{Result, bail, ensure};
use npyz::{DType, Endianness, NpyHeader, Order, TypeChar};

use super::{NpyLayout, Parsed, Tensor, read_exact_at};

const MAGIC: &[u8] = b"\x93NUMPY";
/// numpy itself refuses headers over 10 000 bytes unless told otherwise; a
/// header of a megabyte is a broken or hostile file.
const MAX_HEADER_BYTES: u64 = 1 << 20;

pub(super) fn parse(file: &File, size: u64, stem: &str) -> Result<Parsed> {
    ensure!(size >= 10, "too short for an .npy file ({size} bytes)");
    let mut preamble = [0u8; 12];
    let preamble_len = size.min(12) as usize;
    read_exact_at(file, 0, &mut preamble[..preamble_len])?;
    ensure!(&preamble[..6] == MAGIC, "bad magic: not an .npy file");
    let (major, minor) = (preamble[6], preamble[7]);
    let (prefix_len, header_len) = match (major, minor) {
        (1, 0) => (
            10u64,
            u64::from(u16::from_le_bytes([preamble[8], preamble[9]])),
        ),
        (2, 0) | (3, 0) => {
            ensure!(size >= 12, "too short for an .npy {major}.{minor} file");
            let len = u32::from_le_bytes([preamble[8], preamble[9], preamble[10], preamble[11]]);
            (12, u64::from(len))
        }
        _ => bail!("unsupported .npy version {major}.{minor}"),
    };
    ensure!(
        header_len <= MAX_HEADER_BYTES,
        "header length {header_len} is larger than {MAX_HEADER_BYTES} bytes"
    );
    let data_start = prefix_len + header_len;
    ensure!(
        data_start <= size,
        "header length {header_len} runs past the end of the file ({size} bytes)"
    );
    let mut header = vec![0u8; data_start as usize];
    read_exact_at(file, 0, &mut header)?;

    let parsed = NpyHeader::from_reader(&header[..])
        .map_err(|err| anyhow::anyhow!("invalid header: {err}"))?;
    let (dtype_name, item_size, swap_unit, big_endian) = element_type(&parsed.dtype())?;
    let shape = parsed.shape().to_vec();
    let elements = shape
        .iter()
        .try_fold(1u64, |acc, &dim| acc.checked_mul(dim))
        .ok_or_else(|| anyhow::anyhow!("shape {shape:?} overflows"))?;
    let data_len = elements
        .checked_mul(item_size)
        .ok_or_else(|| anyhow::anyhow!("shape {shape:?} overflows"))?;
    let actual = size - data_start;
    ensure!(
        actual == data_len,
        "shape {shape:?} of {} needs {data_len} data bytes but the file has {actual}",
        parsed.dtype().descr()
    );
    Ok(Parsed {
        header,
        tensors: vec![Tensor {
            name: stem.to_string(),
            dtype: dtype_name.to_string(),
            shape,
            data: data_start..size,
        }],
        metadata: None,
        npy: Some(NpyLayout {
            descr: parsed.dtype().descr(),
            item_size,
            swap_unit,
            big_endian,
            fortran_order: parsed.order() == Order::Fortran,
        }),
    })
}

/// The safetensors spelling, item size, byte-swap unit and byte order of a dtype
/// we carry; an error saying why for the others.
fn element_type(dtype: &DType) -> Result<(&'static str, u64, u64, bool)> {
    let plain = match dtype {
        DType::Plain(plain) => plain,
        DType::Record(_) | DType::Array(..) => {
            bail!(
                "structured dtype {} is not supported (only plain numeric arrays)",
                dtype.descr()
            )
        }
    };
    let size = plain.size_field();
    let name = match (plain.type_char(), size) {
        (TypeChar::Object, _) => {
            bail!("object arrays hold pickled Python objects and are not supported")
        }
        (TypeChar::Bool, 1) => "BOOL",
        (TypeChar::Int, 1) => "I8",
        (TypeChar::Int, 2) => "I16",
        (TypeChar::Int, 4) => "I32",
        (TypeChar::Int, 8) => "I64",
        (TypeChar::Uint, 1) => "U8",
        (TypeChar::Uint, 2) => "U16",
        (TypeChar::Uint, 4) => "U32",
        (TypeChar::Uint, 8) => "U64",
        (TypeChar::Float, 2) => "F16",
        (TypeChar::Float, 4) => "F32",
        (TypeChar::Float, 8) => "F64",
        (TypeChar::Complex, 8) => "C64",
        (TypeChar::Complex, 16) => "C128",
        _ => bail!(
            "dtype {} is not supported (bool, integers, f16/f32/f64 and complex are)",
            dtype.descr()
        ),
    };
    let swap_unit = if plain.type_char() == TypeChar::Complex {
        size / 2
    } else {
        size
    };
    let big_endian = plain.endianness() == Endianness::Big && size > 1;
    Ok((name, size, swap_unit, big_endian))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn npy(version: (u8, u8), dict: &str, data: &[u8]) -> tempfile::NamedTempFile {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        let prefix = if version.0 == 1 { 10 } else { 12 };
        let mut text = dict.to_string();
        while !(prefix + text.len() + 1).is_multiple_of(64) {
            text.push(' ');
        }
        text.push('\n');
        file.write_all(MAGIC).unwrap();
        file.write_all(&[version.0, version.1]).unwrap();
        if version.0 == 1 {
            file.write_all(&(text.len() as u16).to_le_bytes()).unwrap();
        } else {
            file.write_all(&(text.len() as u32).to_le_bytes()).unwrap();
        }
        file.write_all(text.as_bytes()).unwrap();
        file.write_all(data).unwrap();
        file
    }

    fn open(file: &tempfile::NamedTempFile) -> Result<Parsed> {
        let size = file.as_file().metadata().unwrap().len();
        parse(file.as_file(), size, "t")
    }

    #[test]
    fn reads_every_version_and_byte_order() {
        for version in [(1, 0), (2, 0), (3, 0)] {
            let file = npy(
                version,
                "{'descr': '>f4', 'fortran_order': True, 'shape': (2, 3), }",
                &[0; 24],
            );
            let parsed = open(&file).unwrap();
            let layout = parsed.npy.unwrap();
            assert!(layout.big_endian && layout.fortran_order);
            assert_eq!(parsed.tensors[0].shape, vec![2, 3]);
            assert_eq!(parsed.tensors[0].dtype, "F32");
        }
    }

    #[test]
    fn refuses_wrong_length_object_and_structured() {
        let short = npy(
            (1, 0),
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4,), }",
            &[0; 24],
        );
        assert!(format!("{:#}", open(&short).unwrap_err()).contains("needs 32 data bytes"));
        let object = npy(
            (1, 0),
            "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
            &[0; 8],
        );
        assert!(format!("{:#}", open(&object).unwrap_err()).contains("object arrays"));
        let record = npy(
            (1, 0),
            "{'descr': [('a', '<i4'), ('b', '<f4')], 'fortran_order': False, 'shape': (1,), }",
            &[0; 8],
        );
        assert!(format!("{:#}", open(&record).unwrap_err()).contains("structured dtype"));
    }

    #[test]
    fn refuses_shapes_that_overflow() {
        let huge = npy(
            (1, 0),
            "{'descr': '<f8', 'fortran_order': False, 'shape': (4294967296, 4294967296, 16), }",
            &[],
        );
        assert!(open(&huge).is_err());
    }
}
