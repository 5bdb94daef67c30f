//! .npy files written by ndarray-npy, a writer independent of ours in
//! tests/common and of numpy: f32, f64, i64 and bool arrays, in C and in
//! Fortran order. Sent and pulled, they arrive byte-identical and read back
//! as the same arrays; a listing names their dtypes and shapes, and a pulled
//! stream holds a Fortran array in C order with the same values.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use ndarray::{Array, Array1, Array2, Array3, ArrayD};
use ndarray_npy::{ReadableElement, read_npy, write_npy};

/// The arrays, by file name.
struct Fixtures {
    f32_c: Array2<f32>,
    /// The same values in two layouts: a (4, 3) view in Fortran order, and
    /// its copy in C order.
    f64_fortran: Array2<f64>,
    i64_c: Array3<i64>,
    bools: Array1<bool>,
}

impl Fixtures {
    fn new() -> Fixtures {
        let f64_c = Array::from_shape_fn((3, 4), |(i, j)| i as f64 * 10.0 + j as f64 - 0.5);
        Fixtures {
            f32_c: Array::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f32 / 3.0),
            f64_fortran: f64_c.reversed_axes(),
            i64_c: Array::from_shape_fn((2, 3, 4), |(i, j, k)| {
                (i as i64 - 1) * 1_000_000_000_000 + (j * 4 + k) as i64
            }),
            bools: Array::from_iter([true, false, false, true, true]),
        }
    }

    /// Writes every array with ndarray-npy into `dir`; the files' paths.
    fn write(&self, dir: &Path) -> Vec<PathBuf> {
        std::fs::create_dir_all(dir).unwrap();
        let path = |name: &str| dir.join(name);
        assert!(
            self.f64_fortran.t().is_standard_layout(),
            "the f64 array is in Fortran order"
        );
        write_npy(path("f32_c.npy"), &self.f32_c).unwrap();
        write_npy(path("f64_fortran.npy"), &self.f64_fortran).unwrap();
        write_npy(path("f64_c.npy"), &self.f64_fortran.as_standard_layout()).unwrap();
        write_npy(path("i64_c.npy"), &self.i64_c).unwrap();
        write_npy(path("bools.npy"), &self.bools).unwrap();
        let files: Vec<PathBuf> = ["f32_c", "f64_fortran", "f64_c", "i64_c", "bools"]
            .iter()
            .map(|name| path(&format!("{name}.npy")))
            .collect();
        let header = |file: &Path| {
            let bytes = std::fs::read(file).unwrap();
            String::from_utf8_lossy(&bytes[..128.min(bytes.len())]).into_owned()
        };
        assert!(header(&files[1]).contains("'fortran_order': True"));
        assert!(header(&files[2]).contains("'fortran_order': False"));
        files
    }

    /// The arrays read from `dir` are these arrays.
    fn assert_read_back(&self, dir: &Path) {
        fn read<A: ReadableElement>(dir: &Path, name: &str) -> ArrayD<A> {
            read_npy(dir.join(name)).unwrap_or_else(|e| panic!("{name} does not read: {e}"))
        }
        assert_eq!(read::<f32>(dir, "f32_c.npy"), self.f32_c.clone().into_dyn());
        assert_eq!(
            read::<f64>(dir, "f64_fortran.npy"),
            self.f64_fortran.clone().into_dyn()
        );
        assert_eq!(
            read::<f64>(dir, "f64_c.npy"),
            self.f64_fortran.clone().into_dyn()
        );
        assert_eq!(read::<i64>(dir, "i64_c.npy"), self.i64_c.clone().into_dyn());
        assert_eq!(
            read::<bool>(dir, "bools.npy"),
            self.bools.clone().into_dyn()
        );
    }
}

fn assert_same_files(files: &[PathBuf], dir: &Path) {
    for file in files {
        let name = file.file_name().unwrap();
        assert!(
            std::fs::read(file).unwrap() == std::fs::read(dir.join(name)).unwrap(),
            "{name:?} did not arrive byte-identical"
        );
    }
}

#[test]
fn ndarray_npy_files_are_sent_byte_identical_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Fixtures::new();
    let files = fixtures.write(&dir.path().join("written"));
    let out = dir.path().join("out");
    let listener = Listener::start(&["--out", out.to_str().unwrap()]);
    let refs: Vec<&Path> = files.iter().map(PathBuf::as_path).collect();
    let sent = send(&listener.ticket, &refs, &["--json"]);
    assert!(sent.status.success(), "{}", text(&sent.stderr));
    let stored: Vec<_> = json_lines(&sent)
        .into_iter()
        .filter(|line| line["event"] == "file")
        .collect();
    assert_eq!(
        stored.len(),
        files.len(),
        "one `file` event each: {stored:?}"
    );
    assert_same_files(&files, &out);
    assert_eq!(
        files_below(&out).len(),
        files.len(),
        "{:?}",
        files_below(&out)
    );
    fixtures.assert_read_back(&out);
}

#[test]
fn ndarray_npy_files_are_listed_pulled_and_streamed_in_c_order() {
    let dir = tempfile::tempdir().unwrap();
    let fixtures = Fixtures::new();
    let served = dir.path().join("served");
    let files = fixtures.write(&served);
    let listener = Listener::start(&["--serve", served.to_str().unwrap()]);
    let pull = |args: &[&str]| {
        let mut all = vec!["pull", "--relay", "disabled", &listener.ticket];
        all.extend_from_slice(args);
        let output = run(&all);
        assert!(output.status.success(), "{}", text(&output.stderr));
        output
    };

    let listed = json_lines(&pull(&["--list", "--json"]));
    let entry = |name: &str| {
        let line = listed
            .iter()
            .find(|line| line["name"] == name)
            .unwrap_or_else(|| panic!("{name} is not listed: {listed:?}"));
        (line["dtype"].as_str().unwrap(), line["shape"].clone())
    };
    let shape = |dims: &[usize]| serde_json::json!(dims);
    assert_eq!(listed.len(), files.len(), "{listed:?}");
    assert_eq!(entry("f32_c"), ("F32", shape(&[3, 4])));
    assert_eq!(entry("f64_fortran"), ("F64", shape(&[4, 3])));
    assert_eq!(entry("f64_c"), ("F64", shape(&[4, 3])));
    assert_eq!(entry("i64_c"), ("I64", shape(&[2, 3, 4])));
    assert_eq!(entry("bools"), ("BOOL", shape(&[5])));

    let all = dir.path().join("all");
    pull(&["--out", all.to_str().unwrap()]);
    assert_same_files(&files, &all);
    fixtures.assert_read_back(&all);

    // One safetensors stream, which has no Fortran order: the Fortran file's
    // tensor holds the same bytes as its C-order copy.
    let stream = pull(&["f64_fortran", "f64_c", "bools", "--stdout"]).stdout;
    let stream = safetensors::SafeTensors::deserialize(&stream).expect("a safetensors stream");
    let (fortran, c) = (
        stream.tensor("f64_fortran").unwrap(),
        stream.tensor("f64_c").unwrap(),
    );
    assert_eq!(fortran.shape(), [4, 3]);
    assert_eq!(fortran.dtype(), safetensors::Dtype::F64);
    let c_bytes: Vec<u8> = fixtures
        .f64_fortran
        .as_standard_layout()
        .iter()
        .flat_map(|value| value.to_le_bytes())
        .collect();
    assert!(
        c.data() == c_bytes.as_slice(),
        "the C-order file streams as it is"
    );
    assert!(
        fortran.data() == c_bytes.as_slice(),
        "the Fortran-order file streams in C order"
    );
    let bools = stream.tensor("bools").unwrap();
    assert_eq!(bools.dtype(), safetensors::Dtype::BOOL);
    assert_eq!(bools.data(), [1, 0, 0, 1, 1]);
}
