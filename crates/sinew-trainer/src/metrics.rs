//! Classification metrics over label indices: accuracy, macro-F1, and the multi-class Matthews
//! correlation coefficient (Gorodkin's R_K, as scikit-learn computes it).

/// The metrics of one evaluation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Scores {
    /// Fraction correct.
    pub accuracy: f64,
    /// Unweighted mean of the per-class F1 (classes seen in gold or predictions).
    pub macro_f1: f64,
    /// Matthews correlation coefficient.
    pub mcc: f64,
}

impl Scores {
    /// The mean of each metric over several evaluations (e.g. the tasks of a multi-task run).
    pub fn mean(all: &[Scores]) -> Scores {
        let n = all.len().max(1) as f64;
        Scores {
            accuracy: all.iter().map(|s| s.accuracy).sum::<f64>() / n,
            macro_f1: all.iter().map(|s| s.macro_f1).sum::<f64>() / n,
            mcc: all.iter().map(|s| s.mcc).sum::<f64>() / n,
        }
    }
}

/// Scores of `predicted` against `gold` over `classes` labels.
pub fn scores(gold: &[usize], predicted: &[usize], classes: usize) -> Scores {
    assert_eq!(gold.len(), predicted.len(), "one prediction per example");
    let n = gold.len();
    let mut confusion = vec![vec![0f64; classes]; classes];
    for (&g, &p) in gold.iter().zip(predicted) {
        confusion[g][p] += 1.0;
    }
    let correct: f64 = (0..classes).map(|k| confusion[k][k]).sum();
    let gold_count: Vec<f64> = (0..classes).map(|k| confusion[k].iter().sum()).collect();
    let pred_count: Vec<f64> = (0..classes)
        .map(|k| confusion.iter().map(|row| row[k]).sum())
        .collect();
    let present: Vec<usize> = (0..classes)
        .filter(|&k| gold_count[k] + pred_count[k] > 0.0)
        .collect();
    let f1 = |k: usize| {
        let tp = confusion[k][k];
        let denominator = gold_count[k] + pred_count[k];
        if denominator == 0.0 {
            0.0
        } else {
            2.0 * tp / denominator
        }
    };
    let macro_f1 = if present.is_empty() {
        0.0
    } else {
        present.iter().map(|&k| f1(k)).sum::<f64>() / present.len() as f64
    };
    let s = n as f64;
    let covariance = correct * s
        - gold_count
            .iter()
            .zip(&pred_count)
            .map(|(t, p)| t * p)
            .sum::<f64>();
    let spread_pred = s * s - pred_count.iter().map(|p| p * p).sum::<f64>();
    let spread_gold = s * s - gold_count.iter().map(|t| t * t).sum::<f64>();
    let mcc = if spread_pred == 0.0 || spread_gold == 0.0 {
        0.0
    } else {
        covariance / (spread_pred * spread_gold).sqrt()
    };
    Scores {
        accuracy: if n == 0 { 0.0 } else { correct / s },
        macro_f1,
        mcc,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Binary case by hand: TP 3, FN 1, FP 2, TN 4 (10 examples).
    #[test]
    fn binary_closed_form() {
        let gold = [1, 1, 1, 1, 0, 0, 0, 0, 0, 0];
        let pred = [1, 1, 1, 0, 1, 1, 0, 0, 0, 0];
        let s = scores(&gold, &pred, 2);
        assert!((s.accuracy - 0.7).abs() < 1e-12);
        // F1(1) = 6/9, F1(0) = 8/11.
        assert!((s.macro_f1 - (6.0 / 9.0 + 8.0 / 11.0) / 2.0).abs() < 1e-12);
        // (TP·TN − FP·FN) / sqrt((TP+FP)(TP+FN)(TN+FP)(TN+FN)) = 10 / sqrt(5·4·6·5).
        assert!((s.mcc - 10.0 / (600f64).sqrt()).abs() < 1e-12);
    }

    /// Three classes, by hand.
    #[test]
    fn multiclass_closed_form() {
        let gold = [0, 0, 1, 1, 2, 2];
        let pred = [0, 1, 1, 2, 2, 0];
        let s = scores(&gold, &pred, 3);
        assert!((s.accuracy - 0.5).abs() < 1e-12);
        // Every class: one hit of two gold and two predicted → F1 = 0.5.
        assert!((s.macro_f1 - 0.5).abs() < 1e-12);
        // c·s − Σ t·p = 3·6 − 12 = 6; s² − Σ p² = 24 both → 6 / 24.
        assert!((s.mcc - 0.25).abs() < 1e-12);
        let perfect = scores(&gold, &gold, 3);
        assert_eq!(
            (perfect.accuracy, perfect.macro_f1, perfect.mcc),
            (1.0, 1.0, 1.0)
        );
        // A constant prediction has no correlation.
        assert_eq!(scores(&gold, &[1; 6], 3).mcc, 0.0);
    }
}
