//! Label selection and connected components on masks.

use std::collections::VecDeque;

use crate::{Mask, Volume};

/// 1 where the label is one of `values`, else 0.
pub fn labels_to_mask(labels: &Volume<u16>, values: &[u16]) -> Mask {
    labels.map(|v| u8::from(values.contains(v)))
}

/// Number of non-zero voxels.
pub fn count_nonzero(mask: &Mask) -> usize {
    mask.data.iter().filter(|&&v| v != 0).count()
}

/// The largest 26-connected component of the non-zero voxels (as 0/1). Ties go to the component
/// met first in memory order; an empty mask stays empty.
pub fn largest_component(mask: &Mask) -> Mask {
    let [nx, ny, nz] = mask.shape;
    let n = mask.data.len();
    // 0 = background or unvisited, k >= 1 = component k. A queue rather than recursion: one
    // component can span millions of voxels.
    let mut comp = vec![0u32; n];
    let mut queue = VecDeque::new();
    let mut best = (0u32, 0usize);
    let mut next = 0u32;
    for start in 0..n {
        if mask.data[start] == 0 || comp[start] != 0 {
            continue;
        }
        next += 1;
        comp[start] = next;
        queue.push_back(start);
        let mut size = 0usize;
        while let Some(i) = queue.pop_front() {
            size += 1;
            let [x, y, z] = mask.coords(i);
            for xx in x.saturating_sub(1)..=(x + 1).min(nx - 1) {
                for yy in y.saturating_sub(1)..=(y + 1).min(ny - 1) {
                    let row = (xx * ny + yy) * nz;
                    for zz in z.saturating_sub(1)..=(z + 1).min(nz - 1) {
                        let j = row + zz;
                        if mask.data[j] != 0 && comp[j] == 0 {
                            comp[j] = next;
                            queue.push_back(j);
                        }
                    }
                }
            }
        }
        if size > best.1 {
            best = (next, size);
        }
    }
    let keep = best.0;
    Volume {
        shape: mask.shape,
        spacing: mask.spacing,
        affine: mask.affine,
        data: comp
            .iter()
            .map(|&c| u8::from(keep != 0 && c == keep))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mask_with(shape: [usize; 3], on: &[[usize; 3]]) -> Mask {
        let mut m = Volume::from_shape(shape, [1.0; 3], vec![0u8; shape.iter().product()]).unwrap();
        for &[x, y, z] in on {
            let i = m.index(x, y, z);
            m.data[i] = 1;
        }
        m
    }

    #[test]
    fn empty_stays_empty() {
        let m = mask_with([3, 3, 3], &[]);
        assert_eq!(count_nonzero(&largest_component(&m)), 0);
    }

    #[test]
    fn face_edge_and_corner_neighbours_join() {
        // A diagonal chain of corner-touching voxels is one 26-connected component.
        let chain = [[0, 0, 0], [1, 1, 1], [2, 2, 2], [3, 3, 3]];
        let mut on = chain.to_vec();
        // Edge-touching pair and a face-touching pair elsewhere, each smaller than the chain.
        on.extend([[0, 4, 0], [1, 5, 0]]);
        on.extend([[5, 0, 5], [5, 0, 4]]);
        let m = mask_with([6, 6, 6], &on);
        let l = largest_component(&m);
        assert_eq!(count_nonzero(&l), 4);
        for [x, y, z] in chain {
            assert_eq!(l.data[l.index(x, y, z)], 1);
        }
        assert_eq!(l.data[l.index(0, 4, 0)], 0);
    }

    #[test]
    fn separated_by_one_voxel_do_not_join() {
        // Two blobs two voxels apart along x are not neighbours; the larger one wins.
        let m = mask_with(
            [5, 2, 2],
            &[[0, 0, 0], [2, 0, 0], [2, 1, 0], [2, 1, 1], [4, 0, 0]],
        );
        let l = largest_component(&m);
        assert_eq!(count_nonzero(&l), 3);
        assert_eq!(l.data[l.index(0, 0, 0)], 0);
        assert_eq!(l.data[l.index(2, 1, 1)], 1);
    }

    #[test]
    fn matches_naive_union_find_on_random_masks() {
        // Naive O(n^2) reference: repeatedly merge labels of 26-neighbours until stable.
        let shape = [7, 6, 5];
        let n = 7 * 6 * 5;
        let mut state = 12345u64;
        for _ in 0..20 {
            let data: Vec<u8> = (0..n)
                .map(|_| {
                    state = state
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    u8::from((state >> 33) % 100 < 25)
                })
                .collect();
            let m = Volume::from_shape(shape, [1.0; 3], data).unwrap();
            let mut lab: Vec<usize> = (0..n).collect();
            loop {
                let mut changed = false;
                for i in 0..n {
                    for j in 0..n {
                        if m.data[i] == 1 && m.data[j] == 1 && lab[j] < lab[i] {
                            let (a, b) = (m.coords(i), m.coords(j));
                            if (0..3).all(|k| a[k].abs_diff(b[k]) <= 1) {
                                lab[i] = lab[j];
                                changed = true;
                            }
                        }
                    }
                }
                if !changed {
                    break;
                }
            }
            let mut sizes = std::collections::HashMap::new();
            for (&v, &l) in m.data.iter().zip(&lab) {
                if v == 1 {
                    *sizes.entry(l).or_insert(0usize) += 1;
                }
            }
            let max = sizes.values().copied().max().unwrap_or(0);
            assert_eq!(count_nonzero(&largest_component(&m)), max);
        }
    }

    #[test]
    fn labels_to_mask_selects_values() {
        let l = Volume::from_shape([1, 1, 4], [1.0; 3], vec![0u16, 1, 2, 3]).unwrap();
        assert_eq!(labels_to_mask(&l, &[1, 3]).data, vec![0, 1, 0, 1]);
    }
}
