//! The seven FER2013 expressions and a probability vector over them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of FER2013's seven expression classes, in the dataset's label order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Expression {
    /// Label 0.
    Angry,
    /// Label 1.
    Disgust,
    /// Label 2.
    Fear,
    /// Label 3.
    Happy,
    /// Label 4.
    Sad,
    /// Label 5.
    Surprise,
    /// Label 6.
    Neutral,
}

impl Expression {
    /// All classes in FER2013 label order.
    pub const ALL: [Expression; 7] = [
        Expression::Angry,
        Expression::Disgust,
        Expression::Fear,
        Expression::Happy,
        Expression::Sad,
        Expression::Surprise,
        Expression::Neutral,
    ];

    /// The FER2013 label index.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The lowercase name used in configs, events and manifests.
    pub fn name(self) -> &'static str {
        match self {
            Expression::Angry => "angry",
            Expression::Disgust => "disgust",
            Expression::Fear => "fear",
            Expression::Happy => "happy",
            Expression::Sad => "sad",
            Expression::Surprise => "surprise",
            Expression::Neutral => "neutral",
        }
    }
}

impl fmt::Display for Expression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Expression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Expression::ALL
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown expression {s:?}"))
    }
}

/// Probabilities of the seven expressions, indexed by [`Expression::index`].
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Probs(pub [f32; 7]);

impl Probs {
    /// Softmax of raw logits.
    pub fn from_logits(logits: &[f32; 7]) -> Probs {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut p = [0.0; 7];
        let mut sum = 0.0;
        for (o, &l) in p.iter_mut().zip(logits) {
            *o = (l - max).exp();
            sum += *o;
        }
        for o in &mut p {
            *o /= sum;
        }
        Probs(p)
    }

    /// The most probable expression and its probability.
    pub fn top(&self) -> (Expression, f32) {
        let mut best = 0;
        for i in 1..7 {
            if self.0[i] > self.0[best] {
                best = i;
            }
        }
        (Expression::ALL[best], self.0[best])
    }

    /// Probability of one expression.
    pub fn get(&self, e: Expression) -> f32 {
        self.0[e.index()]
    }

    /// Exponential moving average: `alpha * new + (1 - alpha) * self`.
    pub fn blend(&mut self, new: &Probs, alpha: f32) {
        for (s, n) in self.0.iter_mut().zip(new.0) {
            *s = alpha * n + (1.0 - alpha) * *s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_order() {
        let p = Probs::from_logits(&[0.0, 1.0, 2.0, 3.0, -1.0, 0.5, 100.0]);
        let sum: f32 = p.0.iter().sum();
        assert!((sum - 1.0).abs() < 1e-5);
        assert_eq!(p.top().0, Expression::Neutral);
    }

    #[test]
    fn names_round_trip() {
        for e in Expression::ALL {
            assert_eq!(e.name().parse::<Expression>().unwrap(), e);
        }
        assert!("joy".parse::<Expression>().is_err());
    }

    #[test]
    fn blend_moves_towards_new() {
        let mut a = Probs([1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        let b = Probs([0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        a.blend(&b, 0.25);
        assert_eq!(a.0[0], 0.75);
        assert_eq!(a.0[1], 0.25);
    }
}
