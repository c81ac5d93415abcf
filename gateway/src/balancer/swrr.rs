//! Smooth weighted round robin, nginx's algorithm.
//!
//! Each round every candidate's current weight grows by its weight; the largest wins and pays
//! back the round's total. Weights 5,1,1 give a,a,b,a,c,a,a: proportional and interleaved, never
//! a long run of one endpoint. One sequence is shared by all worker threads of an upstream (per
//! thread sequences would each be smooth but together bursty), so the state sits behind a small
//! per-upstream mutex held for a few additions.

use std::sync::Mutex;

#[derive(Debug)]
pub struct SmoothWrr {
    current: Mutex<Vec<i64>>,
}

impl SmoothWrr {
    pub fn new(len: usize) -> Self {
        Self {
            current: Mutex::new(vec![0; len]),
        }
    }

    /// Picks one of `candidates` (index, weight > 0). Indices not offered keep their current
    /// weight, so a temporarily excluded endpoint rejoins where it left off.
    pub fn pick(&self, candidates: impl IntoIterator<Item = (usize, u32)>) -> Option<usize> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let mut total: i64 = 0;
        let mut best: Option<usize> = None;
        for (index, weight) in candidates {
            let Some(slot) = current.get_mut(index) else {
                continue;
            };
            *slot += i64::from(weight);
            total += i64::from(weight);
            if best.is_none_or(|b| current[index] > current[b]) {
                best = Some(index);
            }
        }
        let best = best?;
        current[best] -= total;
        Some(best)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequence(weights: &[u32], n: usize) -> Vec<usize> {
        let wrr = SmoothWrr::new(weights.len());
        (0..n)
            .map(|_| wrr.pick(weights.iter().copied().enumerate()).unwrap())
            .collect()
    }

    #[test]
    fn nginx_reference_sequence() {
        // a,a,b,a,c,a,a for weights 5,1,1, as in nginx's commit message.
        assert_eq!(sequence(&[5, 1, 1], 7), vec![0, 0, 1, 0, 2, 0, 0]);
    }

    #[test]
    fn empty_candidates_pick_nothing() {
        let wrr = SmoothWrr::new(2);
        assert_eq!(wrr.pick(std::iter::empty()), None);
    }

    #[test]
    fn out_of_range_indices_are_ignored() {
        let wrr = SmoothWrr::new(1);
        assert_eq!(wrr.pick([(5, 10), (0, 1)]), Some(0));
    }
}
