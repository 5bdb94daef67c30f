//! Which kind of bytes lies where in a file, so that any piece of it can be
//! described to the [`Encoder`](super::Encoder) as regions.

use super::{Kind, Region};

/// Spans of a file by kind, in file order; bytes outside every span are
/// [`Kind::General`] (headers, and files of unknown layout).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Layout {
    spans: Vec<Span>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    start: u64,
    end: u64,
    kind: Kind,
}

impl Layout {
    /// Notes that `len` bytes from `start`, after every span pushed so far,
    /// hold `kind`. A span that continues the last one (same kind, on its
    /// element grid) joins it, so that many small tensors code as one region.
    pub fn push(&mut self, start: u64, len: u64, kind: Kind) {
        if len == 0 || kind == Kind::General {
            return;
        }
        let end = start + len;
        if let Some(last) = self.spans.last_mut()
            && last.kind == kind
            && last.end == start
            && (start - last.start).is_multiple_of(width(kind))
        {
            last.end = end;
            return;
        }
        // Overlapping tensors (which no valid file has) are left as general data.
        if self.spans.last().is_some_and(|last| last.end > start) {
            return;
        }
        self.spans.push(Span { start, end, kind });
    }

    /// Describes the `len` bytes from `start` as regions, into `regions`.
    pub fn regions(&self, start: u64, len: usize, regions: &mut Vec<Region>) {
        regions.clear();
        let end = start + len as u64;
        let mut at = start;
        let first = self.spans.partition_point(|span| span.end <= start);
        for span in self.spans[first..]
            .iter()
            .take_while(|span| span.start < end)
        {
            let from = span.start.max(at);
            // A piece may begin inside an element: its bytes up to the next
            // element go as general data.
            let phase = (from - span.start) % width(span.kind);
            let aligned = (from + (width(span.kind) - phase) % width(span.kind)).min(end);
            push_region(regions, aligned - at, Kind::General);
            push_region(
                regions,
                span.end.min(end).saturating_sub(aligned),
                span.kind,
            );
            at = span.end.min(end).max(aligned);
        }
        push_region(regions, end - at, Kind::General);
    }
}

fn width(kind: Kind) -> u64 {
    match kind {
        Kind::Float { width } => u64::from(width),
        Kind::General | Kind::Stored => 1,
    }
}

fn push_region(regions: &mut Vec<Region>, len: u64, kind: Kind) {
    if len == 0 {
        return;
    }
    match regions.last_mut() {
        Some(last) if last.kind == kind && width(kind) == 1 => last.len += len as usize,
        _ => regions.push(Region {
            len: len as usize,
            kind,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BF16: Kind = Kind::Float { width: 2 };
    const F32: Kind = Kind::Float { width: 4 };

    fn regions(layout: &Layout, start: u64, len: usize) -> Vec<(usize, Kind)> {
        let mut regions = Vec::new();
        layout.regions(start, len, &mut regions);
        regions.into_iter().map(|r| (r.len, r.kind)).collect()
    }

    #[test]
    fn a_header_then_tensors() {
        let mut layout = Layout::default();
        layout.push(100, 40, F32);
        layout.push(140, 20, F32);
        layout.push(160, 10, Kind::Stored);
        assert_eq!(
            regions(&layout, 0, 200),
            [
                (100, Kind::General),
                (60, F32),
                (10, Kind::Stored),
                (30, Kind::General)
            ]
        );
    }

    #[test]
    fn a_piece_inside_an_element_starts_on_the_next() {
        let mut layout = Layout::default();
        layout.push(10, 1000, F32);
        assert_eq!(regions(&layout, 13, 100), [(1, Kind::General), (99, F32)]);
        assert_eq!(regions(&layout, 0, 12), [(10, Kind::General), (2, F32)]);
    }

    #[test]
    fn spans_off_each_others_grid_stay_apart() {
        let mut layout = Layout::default();
        layout.push(0, 6, BF16);
        layout.push(6, 8, F32);
        layout.push(14, 3, Kind::Stored);
        layout.push(17, 4, BF16);
        assert_eq!(
            regions(&layout, 0, 21),
            [(6, BF16), (8, F32), (3, Kind::Stored), (4, BF16)]
        );
    }

    #[test]
    fn regions_cover_every_piece_exactly() {
        let mut layout = Layout::default();
        layout.push(7, 1001, F32);
        layout.push(2000, 999, BF16);
        for start in 0..40u64 {
            for len in [1usize, 5, 64, 1000, 3000] {
                let covered: usize = regions(&layout, start * 37, len).iter().map(|r| r.0).sum();
                assert_eq!(covered, len, "piece at {} of {len}", start * 37);
            }
        }
    }
}
