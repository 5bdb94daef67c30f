//! An `.npy` file's data as safetensors stores it, little-endian in C order,
//! made range by range as it is sent: converting the whole tensor first would
//! hold all of it in memory.
//!
//! Big-endian data is read as it lies and each element's bytes reversed.
//! Column-major (Fortran order) data of shape `(d0, .., dn)` lies as a C-order
//! array of shape `(dn, .., d0)`: axis 0 of the output is the one contiguous
//! in the file. So a range of output elements is made from runs along axis 0,
//! one per combination of the other axes (a "column"), read together where
//! they lie close enough that reading the gap costs less than another read.

use std::fs::File;
use std::ops::Range;
use std::sync::Arc;

use super::{NpyLayout, TensorFile, read_exact_at};
use crate::protocol::transfer::Conversion;

/// The most file bytes read at once: bounds the memory a read takes.
const MAX_SPAN: u64 = 1 << 20;
/// Runs this close are read as one: copying a few pages costs about what a
/// read call does.
const MAX_GAP: u64 = 4 << 10;
/// The largest element: a 128-bit complex number.
const MAX_ITEM: usize = 16;

pub struct NpyConversion {
    file: Arc<File>,
    data_start: u64,
    size: u64,
    item: usize,
    /// The number of bytes reversed together in big-endian data (half an
    /// element for complex numbers); none for little-endian data.
    swap_unit: Option<usize>,
    column_major: Option<ColumnMajor>,
}

/// Where the elements of column-major data lie, all counted in elements.
struct ColumnMajor {
    dims: Vec<u64>,
    /// How far apart neighbours along each axis lie in the file.
    file_strides: Vec<u64>,
    /// How far apart neighbours along each axis lie in the output.
    out_strides: Vec<u64>,
}

impl NpyConversion {
    /// The conversion of the `.npy` data of `file`, read through `handle`, or
    /// none when it is little-endian C order already.
    pub fn of(file: &TensorFile, handle: &Arc<File>) -> Option<NpyConversion> {
        let layout: &NpyLayout = file.npy.as_ref()?;
        let tensor = file.tensors.first()?;
        let dims = &tensor.shape;
        // One axis or none lies the same way in either order.
        let column_major = (layout.fortran_order && dims.len() > 1).then(|| {
            let file_strides = dims
                .iter()
                .scan(1, |stride, &dim| {
                    let this = *stride;
                    *stride *= dim;
                    Some(this)
                })
                .collect();
            let mut out_strides: Vec<u64> = dims
                .iter()
                .rev()
                .scan(1, |stride, &dim| {
                    let this = *stride;
                    *stride *= dim;
                    Some(this)
                })
                .collect();
            out_strides.reverse();
            ColumnMajor {
                dims: dims.clone(),
                file_strides,
                out_strides,
            }
        });
        let swap_unit = layout.big_endian.then_some(layout.swap_unit as usize);
        if column_major.is_none() && swap_unit.is_none() {
            return None;
        }
        Some(NpyConversion {
            file: handle.clone(),
            data_start: tensor.data.start,
            size: tensor.byte_len(),
            item: layout.item_size as usize,
            swap_unit,
            column_major,
        })
    }

    /// Fills `out`, a whole number of elements, with the output from element
    /// `first` on.
    fn convert(&self, first: u64, out: &mut [u8]) -> std::io::Result<()> {
        match &self.column_major {
            None => {
                read_exact_at(&self.file, self.data_start + first * self.item as u64, out)?;
                self.to_little_endian(out);
                Ok(())
            }
            Some(layout) => {
                let end = first + (out.len() / self.item) as u64;
                let mut span = Vec::new();
                for block in blocks_covering(&layout.dims, first..end) {
                    self.gather(layout, &block, first..end, out, &mut span)?;
                }
                Ok(())
            }
        }
    }

    /// Copies the elements of `block` that lie in the output range `wanted`
    /// into `out`, which holds that range.
    fn gather(
        &self,
        layout: &ColumnMajor,
        block: &[Range<u64>],
        wanted: Range<u64>,
        out: &mut [u8],
        span: &mut Vec<u8>,
    ) -> std::io::Result<()> {
        let item = self.item as u64;
        // Runs longer than a span are read a span at a time.
        let longest = (MAX_SPAN / item).max(1);
        let mut rows = block[0].clone();
        while !rows.is_empty() {
            let run = rows.start..rows.end.min(rows.start + longest);
            let run_bytes = (run.end - run.start) * item;
            let mut columns = Columns::new(layout, block, run.start);
            while !columns.done {
                // As many runs as one read can cover, then those runs again
                // to copy them out: remembering them would take memory.
                let mark = columns.clone();
                let span_start = columns.source * item;
                let mut span_end = span_start + run_bytes;
                let mut runs = 1;
                columns.advance();
                while !columns.done {
                    let next = columns.source * item;
                    if next.saturating_sub(span_end) > MAX_GAP
                        || next + run_bytes - span_start > MAX_SPAN
                    {
                        break;
                    }
                    span_end = next + run_bytes;
                    runs += 1;
                    columns.advance();
                }
                span.resize((span_end - span_start) as usize, 0);
                read_exact_at(&self.file, self.data_start + span_start, span)?;
                self.to_little_endian(span);
                let mut again = mark;
                for _ in 0..runs {
                    let at = (again.source * item - span_start) as usize;
                    let placed = Placement {
                        first: again.target,
                        stride: layout.out_strides[0],
                        wanted: wanted.clone(),
                    };
                    scatter(&span[at..at + run_bytes as usize], out, &placed, self.item);
                    again.advance();
                }
            }
            rows.start = run.end;
        }
        Ok(())
    }

    fn to_little_endian(&self, data: &mut [u8]) {
        if let Some(unit) = self.swap_unit {
            for element in data.chunks_exact_mut(unit) {
                element.reverse();
            }
        }
    }
}

impl Conversion for NpyConversion {
    fn size(&self) -> u64 {
        self.size
    }

    fn file(&self) -> Option<&Arc<File>> {
        Some(&self.file)
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.size())
        {
            return Err(std::io::Error::other(
                "a read past the end of a converted tensor",
            ));
        }
        // A range may start and end inside elements: the pieces of a file
        // are cut where its header's length puts them.
        let item = self.item as u64;
        let mut element = offset / item;
        let mut rest = buf;
        let skip = (offset % item) as usize;
        if skip > 0 && !rest.is_empty() {
            let mut one = [0u8; MAX_ITEM];
            self.convert(element, &mut one[..self.item])?;
            let take = (self.item - skip).min(rest.len());
            rest[..take].copy_from_slice(&one[skip..skip + take]);
            rest = &mut rest[take..];
            element += 1;
        }
        let whole = rest.len() - rest.len() % self.item;
        let (middle, tail) = rest.split_at_mut(whole);
        self.convert(element, middle)?;
        if !tail.is_empty() {
            let mut one = [0u8; MAX_ITEM];
            self.convert(element + (whole / self.item) as u64, &mut one[..self.item])?;
            tail.copy_from_slice(&one[..tail.len()]);
        }
        Ok(())
    }
}

/// The boxes (a range per axis) of a C-order array of `dims` that hold the
/// elements `wanted`, maybe more. A range of several rows along axis 0 is
/// covered by whole rows: each column is then one read however the range
/// cuts the rows, the elements outside it read but not copied. Within a row
/// the boxes are exact, at most two per axis.
fn blocks_covering(dims: &[u64], wanted: Range<u64>) -> Vec<Vec<Range<u64>>> {
    let mut blocks = Vec::new();
    if wanted.is_empty() {
        return blocks;
    }
    let row: u64 = dims[1..].iter().product();
    let rows = wanted.start / row..(wanted.end - 1) / row + 1;
    if rows.end - rows.start > 1 {
        let mut block = vec![rows];
        block.extend(dims[1..].iter().map(|&dim| 0..dim));
        blocks.push(block);
    } else {
        let start = wanted.start % row;
        let end = wanted.end - rows.start * row;
        split(&dims[1..], start..end, &mut vec![rows], &mut blocks);
    }
    blocks
}

/// Adds to `blocks` the exact boxes holding the elements `wanted` of a
/// C-order array of `dims`, each behind the ranges of `outer`.
fn split(
    dims: &[u64],
    wanted: Range<u64>,
    outer: &mut Vec<Range<u64>>,
    blocks: &mut Vec<Vec<Range<u64>>>,
) {
    if wanted.is_empty() {
        return;
    }
    let Some((_, inner_dims)) = dims.split_first() else {
        blocks.push(outer.clone());
        return;
    };
    let inner: u64 = inner_dims.iter().product();
    let (first, last) = (wanted.start / inner, wanted.end / inner);
    let (head, tail) = (wanted.start % inner, wanted.end % inner);
    if first == last {
        outer.push(first..first + 1);
        split(inner_dims, head..tail, outer, blocks);
        outer.pop();
        return;
    }
    let mut whole_from = first;
    if head > 0 {
        outer.push(first..first + 1);
        split(inner_dims, head..inner, outer, blocks);
        outer.pop();
        whole_from += 1;
    }
    if whole_from < last {
        let mut block = outer.clone();
        block.push(whole_from..last);
        block.extend(inner_dims.iter().map(|&dim| 0..dim));
        blocks.push(block);
    }
    if tail > 0 {
        outer.push(last..last + 1);
        split(inner_dims, 0..tail, outer, blocks);
        outer.pop();
    }
}

/// The columns of a box, in the order they lie in the file (axis 1 fastest),
/// with where each one's run starts in the file and in the output.
#[derive(Clone)]
struct Columns<'a> {
    layout: &'a ColumnMajor,
    block: &'a [Range<u64>],
    index: Vec<u64>,
    /// Elements from the start of the data.
    source: u64,
    /// Elements from the start of the output.
    target: u64,
    done: bool,
}

impl<'a> Columns<'a> {
    fn new(layout: &'a ColumnMajor, block: &'a [Range<u64>], row: u64) -> Columns<'a> {
        let index: Vec<u64> = block.iter().map(|range| range.start).collect();
        let mut source = row;
        let mut target = row * layout.out_strides[0];
        let strides = layout.file_strides.iter().zip(&layout.out_strides);
        for (at, (file_stride, out_stride)) in index.iter().zip(strides).skip(1) {
            source += at * file_stride;
            target += at * out_stride;
        }
        Columns {
            layout,
            block,
            index,
            source,
            target,
            done: block.iter().any(Range::is_empty),
        }
    }

    fn advance(&mut self) {
        for axis in 1..self.block.len() {
            self.index[axis] += 1;
            self.source += self.layout.file_strides[axis];
            self.target += self.layout.out_strides[axis];
            if self.index[axis] < self.block[axis].end {
                return;
            }
            let passed = self.index[axis] - self.block[axis].start;
            self.source -= passed * self.layout.file_strides[axis];
            self.target -= passed * self.layout.out_strides[axis];
            self.index[axis] = self.block[axis].start;
        }
        self.done = true;
    }
}

/// Where a run's elements go: the output element of its first, how far apart
/// its elements go, and the output range being made, outside which they are
/// left out.
struct Placement {
    first: u64,
    stride: u64,
    wanted: Range<u64>,
}

impl Placement {
    /// Which of a run's `len` elements land in the wanted range.
    fn kept(&self, len: u64) -> Range<u64> {
        let from = self
            .wanted
            .start
            .saturating_sub(self.first)
            .div_ceil(self.stride);
        let to = if self.first >= self.wanted.end {
            0
        } else {
            (self.wanted.end - 1 - self.first) / self.stride + 1
        };
        from.min(len)..to.min(len)
    }
}

/// Copies the elements of `run` where `placed` puts them in `out`; a copy of
/// a known size compiles to a move, where one of any size is a call.
fn scatter(run: &[u8], out: &mut [u8], placed: &Placement, item: usize) {
    match item {
        1 => scatter_sized::<1>(run, out, placed),
        2 => scatter_sized::<2>(run, out, placed),
        4 => scatter_sized::<4>(run, out, placed),
        8 => scatter_sized::<8>(run, out, placed),
        16 => scatter_sized::<16>(run, out, placed),
        other => unreachable!("no .npy dtype carried is {other} bytes"),
    }
}

fn scatter_sized<const ITEM: usize>(run: &[u8], out: &mut [u8], placed: &Placement) {
    let kept = placed.kept((run.len() / ITEM) as u64);
    let offset = placed.wanted.start;
    for element in kept {
        let from = element as usize * ITEM;
        let to = (placed.first + element * placed.stride - offset) as usize * ITEM;
        out[to..to + ITEM].copy_from_slice(&run[from..from + ITEM]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::io::Write;

    /// The dtypes tested, as numpy spells them without a byte order.
    const DTYPES: [&str; 6] = ["f4", "f8", "c8", "c16", "u2", "b1"];

    /// An `.npy` file of `dims` holding the bytes `data`, opened.
    fn npy_file(
        descr: &str,
        fortran: bool,
        dims: &[u64],
        data: &[u8],
    ) -> (tempfile::TempDir, TensorFile) {
        let shape: String = dims.iter().map(|dim| format!("{dim}, ")).collect();
        let order = if fortran { "True" } else { "False" };
        let mut dict =
            format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': ({shape}), }}");
        while !(10 + dict.len() + 1).is_multiple_of(64) {
            dict.push(' ');
        }
        dict.push('\n');
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.npy");
        let mut file = File::create(&path).unwrap();
        file.write_all(b"\x93NUMPY\x01\x00").unwrap();
        file.write_all(&(dict.len() as u16).to_le_bytes()).unwrap();
        file.write_all(dict.as_bytes()).unwrap();
        file.write_all(data).unwrap();
        drop(file);
        let opened = TensorFile::open(&path).unwrap();
        (dir, opened)
    }

    /// The whole converted tensor, an element at a time: what the ranges
    /// read must be made of.
    fn converted_whole(file: &TensorFile, data: &[u8]) -> Vec<u8> {
        let layout = file.npy.as_ref().unwrap();
        let dims = &file.tensors[0].shape;
        let item = layout.item_size as usize;
        let count = data.len() / item;
        let mut out = vec![0u8; data.len()];
        for c_pos in 0..count {
            let mut rest = c_pos as u64;
            let mut f_pos = 0;
            if layout.fortran_order {
                let mut stride = 1;
                let mut index = vec![0; dims.len()];
                for axis in (0..dims.len()).rev() {
                    index[axis] = rest % dims[axis];
                    rest /= dims[axis];
                }
                for (axis, &dim) in dims.iter().enumerate() {
                    f_pos += index[axis] * stride;
                    stride *= dim;
                }
            } else {
                f_pos = rest;
            }
            let f_pos = f_pos as usize;
            let element = &mut out[c_pos * item..(c_pos + 1) * item];
            element.copy_from_slice(&data[f_pos * item..(f_pos + 1) * item]);
            if layout.big_endian {
                for unit in element.chunks_exact_mut(layout.swap_unit as usize) {
                    unit.reverse();
                }
            }
        }
        out
    }

    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    fn descr(dtype: &str, big_endian: bool) -> String {
        match dtype {
            "b1" => "|b1".to_string(),
            _ if big_endian => format!(">{dtype}"),
            _ => format!("<{dtype}"),
        }
    }

    fn item_size(dtype: &str) -> usize {
        match dtype {
            "b1" => 1,
            "u2" => 2,
            "f4" => 4,
            "f8" | "c8" => 8,
            _ => 16,
        }
    }

    proptest! {
        #[test]
        fn any_range_is_the_whole_conversions(
            dims in proptest::collection::vec(0u64..7, 0..4),
            dtype in proptest::sample::select(DTYPES.to_vec()),
            fortran in any::<bool>(),
            big_endian in any::<bool>(),
            reads in proptest::collection::vec((any::<u64>(), any::<u64>()), 1..8),
        ) {
            let count: u64 = dims.iter().product();
            let data = noise(count as usize * item_size(dtype), count);
            let (_dir, file) = npy_file(&descr(dtype, big_endian), fortran, &dims, &data);
            let handle = Arc::new(File::open(&file.path).unwrap());
            let expected = converted_whole(&file, &data);
            let Some(conversion) = NpyConversion::of(&file, &handle) else {
                prop_assert_eq!(expected, data);
                return Ok(());
            };
            prop_assert_eq!(conversion.size(), expected.len() as u64);
            for (start, len) in reads {
                let total = expected.len() as u64;
                let start = start % (total + 1);
                let len = len % (total - start + 1);
                let mut buf = vec![0u8; len as usize];
                conversion.read_at(start, &mut buf).unwrap();
                prop_assert_eq!(&buf[..], &expected[start as usize..(start + len) as usize]);
            }
            let mut past = [0u8; 1];
            prop_assert!(conversion.read_at(conversion.size(), &mut past).is_err());
        }
    }

    /// Shapes whose columns are long, short, or far apart: runs split into
    /// spans, many runs read as one, and a read per run; each read in pieces
    /// cut where a sender's would be.
    #[test]
    fn large_tensors_read_in_pieces_are_the_whole_conversions() {
        for (dims, dtype, big_endian) in [
            (vec![200_000, 2], "f8", false),
            (vec![2, 3, 70_000], "f4", true),
            (vec![3000, 300], "c8", true),
            (vec![600, 3, 5, 70], "f8", false),
        ] {
            let count: u64 = dims.iter().product();
            let data = noise(count as usize * item_size(dtype), count);
            let (_dir, file) = npy_file(&descr(dtype, big_endian), true, &dims, &data);
            let handle = Arc::new(File::open(&file.path).unwrap());
            let expected = converted_whole(&file, &data);
            let conversion = NpyConversion::of(&file, &handle).unwrap();
            let piece = (1 << 20) - 13;
            let mut offset = 0;
            while offset < expected.len() {
                let len = piece.min(expected.len() - offset);
                let mut buf = vec![0u8; len];
                conversion.read_at(offset as u64, &mut buf).unwrap();
                assert!(
                    buf == expected[offset..offset + len],
                    "{dims:?} {dtype} from {offset}"
                );
                offset += len;
            }
        }
    }
}
