//! Byte planes of little-endian floats.
//!
//! The bytes of trained weights are not alike: the one holding the exponent
//! takes a few values most of the time, the low mantissa bytes are close to
//! random. Gathering byte `k` of every element into plane `k` lets an entropy
//! coder see those distributions apart. Each element is first rotated left
//! by one bit, which moves the sign (random) to the lowest bit and the whole
//! exponent of bf16, f32 and f64 into the top byte.

/// Splits `data` (whole elements of `width` bytes) into `width` planes,
/// appended to `planes` one after another.
pub fn split(data: &[u8], width: usize, planes: &mut Vec<u8>) {
    let count = data.len() / width;
    let base = planes.len();
    planes.resize(base + data.len(), 0);
    let out = &mut planes[base..];
    match width {
        // One plane: rotating each byte would not change its entropy.
        1 => out.copy_from_slice(data),
        2 => {
            let (low, high) = out.split_at_mut(count);
            for ((element, low), high) in data.chunks_exact(2).zip(low).zip(high) {
                let value = u16::from_le_bytes([element[0], element[1]]).rotate_left(1);
                [*low, *high] = value.to_le_bytes();
            }
        }
        4 => {
            for (index, element) in data.chunks_exact(4).enumerate() {
                let value = u32::from_le_bytes(element.try_into().expect("4 bytes")).rotate_left(1);
                for (plane, byte) in value.to_le_bytes().into_iter().enumerate() {
                    out[plane * count + index] = byte;
                }
            }
        }
        _ => {
            for (index, element) in data.chunks_exact(width).enumerate() {
                let value = rotate_left(element);
                for (plane, byte) in value.into_iter().enumerate().take(width) {
                    out[plane * count + index] = byte;
                }
            }
        }
    }
}

/// Joins `width` planes written by [`split`] back into elements, into `out`.
pub fn join(planes: &[u8], width: usize, out: &mut [u8]) {
    let count = planes.len() / width;
    match width {
        1 => out.copy_from_slice(planes),
        2 => {
            let (low, high) = planes.split_at(count);
            for ((element, &low), &high) in out.chunks_exact_mut(2).zip(low).zip(high) {
                let value = u16::from_le_bytes([low, high]).rotate_right(1);
                element.copy_from_slice(&value.to_le_bytes());
            }
        }
        4 => {
            for (index, element) in out.chunks_exact_mut(4).enumerate() {
                let bytes = [0, 1, 2, 3].map(|plane| planes[plane * count + index]);
                let value = u32::from_le_bytes(bytes).rotate_right(1);
                element.copy_from_slice(&value.to_le_bytes());
            }
        }
        _ => {
            for (index, element) in out.chunks_exact_mut(width).enumerate() {
                let mut bytes = [0u8; 8];
                for (plane, byte) in bytes.iter_mut().enumerate().take(width) {
                    *byte = planes[plane * count + index];
                }
                element.copy_from_slice(&rotate_right(&bytes[..width])[..width]);
            }
        }
    }
}

/// Rotates a little-endian element of up to 8 bytes left by one bit.
fn rotate_left(element: &[u8]) -> [u8; 8] {
    let bits = element.len() as u32 * 8;
    let mut wide = [0u8; 8];
    wide[..element.len()].copy_from_slice(element);
    let value = u64::from_le_bytes(wide);
    let rotated = ((value << 1) | (value >> (bits - 1))) & mask(bits);
    rotated.to_le_bytes()
}

fn rotate_right(element: &[u8]) -> [u8; 8] {
    let bits = element.len() as u32 * 8;
    let mut wide = [0u8; 8];
    wide[..element.len()].copy_from_slice(element);
    let value = u64::from_le_bytes(wide);
    let rotated = ((value >> 1) | (value << (bits - 1))) & mask(bits);
    rotated.to_le_bytes()
}

fn mask(bits: u32) -> u64 {
    if bits == 64 {
        u64::MAX
    } else {
        (1 << bits) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_exponent_of_a_bf16_fills_its_top_plane() {
        // 1.0 in bf16 is 0x3f80: sign 0, exponent 127.
        let mut planes = Vec::new();
        split(&[0x80, 0x3f], 2, &mut planes);
        assert_eq!(planes, [0x00, 127]);
    }

    proptest! {
        #[test]
        fn planes_join_back(width in prop::sample::select(vec![1usize, 2, 4, 8]), elements in proptest::collection::vec(any::<u8>(), 0..512)) {
            let data = &elements[..elements.len() / width * width];
            let mut planes = Vec::new();
            split(data, width, &mut planes);
            let mut joined = vec![0u8; data.len()];
            join(&planes, width, &mut joined);
            prop_assert_eq!(joined, data);
        }
    }
}
