//! `.npy` files: versions 1.0, 2.0 and 3.0. The header's Python literal is parsed
//! by npyz; this module bounds it, decides which dtypes we carry, and checks the
//! data length against the shape.

use std::borrow::Cow;
use std::fs::File;

use anyhow::{Result, bail, ensure};
use npyz::{DType, Endianness, NpyHeader, Order, TypeChar};
use py_literal::Value;

use super::{NpyLayout, Parsed, Tensor, read_exact_at};

const MAGIC: &[u8] = b"\x93NUMPY";
/// numpy itself refuses headers over 10 000 bytes unless told otherwise; a
/// header of a megabyte is a broken or hostile file.
const MAX_HEADER_BYTES: u64 = 1 << 20;
const OBJECT_ARRAYS: &str = "object arrays hold pickled Python objects and are not supported";

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

    let parsed = read_header(&header, prefix_len as usize, (major, minor))?;
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

/// Parses the header as numpy does: the dictionary of a version 1.0 or 2.0
/// file may hold Python 2 long integers (`'shape': (2L,)`), and a dtype that
/// holds Python objects anywhere, in any spelling, is refused as such (npyz
/// knows only some of the spellings numpy writes).
fn read_header(header: &[u8], prefix_len: usize, version: (u8, u8)) -> Result<NpyHeader> {
    let parse = |bytes: &[u8]| {
        NpyHeader::from_reader(bytes).map_err(|err| anyhow::anyhow!("invalid header: {err}"))
    };
    // Not UTF-8: npyz says so.
    let Ok(dict) = std::str::from_utf8(&header[prefix_len..]) else {
        return parse(header);
    };
    let dict = if version.0 <= 2 {
        without_long_suffixes(dict)
    } else {
        Cow::Borrowed(dict)
    };
    if dict
        .trim_end()
        .parse::<Value>()
        .is_ok_and(|value| holds_objects(&value))
    {
        bail!(OBJECT_ARRAYS);
    }
    match dict {
        Cow::Borrowed(_) => parse(header),
        Cow::Owned(dict) => {
            // Magic and version, then the length, which fits as the original's did.
            let mut rebuilt = header[..8].to_vec();
            if version.0 == 1 {
                rebuilt.extend_from_slice(&(dict.len() as u16).to_le_bytes());
            } else {
                rebuilt.extend_from_slice(&(dict.len() as u32).to_le_bytes());
            }
            rebuilt.extend_from_slice(dict.as_bytes());
            parse(&rebuilt)
        }
    }
}

/// `dict` without the `L` Python 2 wrote after a `long` integer, dropped where
/// numpy drops it: right after a number, outside strings.
fn without_long_suffixes(dict: &str) -> Cow<'_, str> {
    let mut kept = String::with_capacity(dict.len());
    let mut quote = None;
    let mut escaped = false;
    let mut in_number = false;
    let mut previous = ' ';
    let mut chars = dict.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(open) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == open {
                quote = None;
            }
        } else if c == 'L' && in_number && !chars.peek().is_some_and(|&next| is_word(next)) {
            in_number = false;
            continue;
        } else if c == '\'' || c == '"' {
            quote = Some(c);
        }
        in_number = if in_number {
            is_word(c) || c == '.'
        } else {
            quote.is_none() && c.is_ascii_digit() && !is_word(previous)
        };
        previous = c;
        kept.push(c);
    }
    if kept.len() == dict.len() {
        Cow::Borrowed(dict)
    } else {
        Cow::Owned(kept)
    }
}

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Whether the header dictionary's `descr` is, or has a field of, a dtype of
/// Python objects.
fn holds_objects(dict: &Value) -> bool {
    let Value::Dict(entries) = dict else {
        return false;
    };
    entries
        .iter()
        .find(|(key, _)| matches!(key, Value::String(key) if key == "descr"))
        .is_some_and(|(_, descr)| descr_holds_objects(descr))
}

/// A descr is a type string, or a list of fields `(name, descr[, shape])`.
fn descr_holds_objects(descr: &Value) -> bool {
    match descr {
        Value::String(type_str) => is_object_type(type_str),
        Value::List(fields) => fields.iter().any(|field| match field {
            Value::Tuple(parts) | Value::List(parts) => {
                parts.get(1).is_some_and(descr_holds_objects)
            }
            _ => false,
        }),
        _ => false,
    }
}

/// `O`, `|O`, `<O8`, `=O4`, `object`...: the spellings numpy takes for objects.
fn is_object_type(type_str: &str) -> bool {
    let unordered = type_str
        .strip_prefix(['<', '>', '|', '='])
        .unwrap_or(type_str);
    matches!(type_str, "object" | "object_")
        || unordered
            .strip_prefix('O')
            .is_some_and(|size| size.chars().all(|c| c.is_ascii_digit()))
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
        (TypeChar::Object, _) => bail!(OBJECT_ARRAYS),
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
    fn reads_python_2_long_integers_as_numpy_does() {
        for version in [(1, 0), (2, 0)] {
            let file = npy(
                version,
                "{'descr': '<f8', 'fortran_order': False, 'shape': (2L, 3L), }",
                &[0; 48],
            );
            let parsed = open(&file).unwrap();
            assert_eq!(parsed.tensors[0].shape, vec![2, 3]);
            assert_eq!(parsed.tensors[0].dtype, "F64");
        }
        // Python 2 never wrote version 3.0, and numpy reads it strictly.
        let three = npy(
            (3, 0),
            "{'descr': '<f8', 'fortran_order': False, 'shape': (2L,), }",
            &[0; 16],
        );
        assert!(open(&three).is_err());
        assert_eq!(
            without_long_suffixes("{'descr': '<f8L', 'shape': (10L, 0x1fL), 'L': 2}"),
            "{'descr': '<f8L', 'shape': (10, 0x1f), 'L': 2}"
        );
    }

    #[test]
    fn numpys_own_test_files_load_or_are_refused_as_object_arrays() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/numpy");
        for name in ["python3.npy", "win64python2.npy"] {
            let file = File::open(dir.join(name)).unwrap();
            let size = file.metadata().unwrap().len();
            let parsed = parse(&file, size, "t").unwrap_or_else(|err| panic!("{name}: {err:#}"));
            assert_eq!(parsed.tensors[0].dtype, "F64", "{name}");
            assert_eq!(parsed.tensors[0].shape, vec![2], "{name}");
        }
        for name in ["py2-objarr.npy", "py2-np0-objarr.npy", "py3-objarr.npy"] {
            let file = File::open(dir.join(name)).unwrap();
            let size = file.metadata().unwrap().len();
            let err = parse(&file, size, "t").unwrap_err();
            assert_eq!(format!("{err:#}"), OBJECT_ARRAYS, "{name}");
        }
    }

    #[test]
    fn every_spelling_of_an_object_dtype_is_refused_as_one() {
        for descr in [
            "'O'",
            "'|O'",
            "'<O'",
            "'>O'",
            "'=O'",
            "'O8'",
            "'|O8'",
            "'<O8'",
            "'|O4'",
            "'object'",
            "[('a', '<i4'), ('b', '|O')]",
            "[('a', '<f8'), ('b', '|O8', (2,))]",
            "[('outer', [('inner', 'O')])]",
            "[(('title', 'a'), '<O8')]",
        ] {
            let file = npy(
                (1, 0),
                &format!("{{'descr': {descr}, 'fortran_order': False, 'shape': (1,), }}"),
                &[0; 8],
            );
            let err = open(&file).unwrap_err();
            assert_eq!(format!("{err:#}"), OBJECT_ARRAYS, "{descr}");
        }
        // A field named O holds floats.
        let named_o = npy(
            (1, 0),
            "{'descr': [('O', '<f8')], 'fortran_order': False, 'shape': (1,), }",
            &[0; 8],
        );
        assert!(format!("{:#}", open(&named_o).unwrap_err()).contains("structured dtype"));
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
