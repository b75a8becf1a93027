//! Alert rules: turning tracked faces into alerts that rise and clear.
//!
//! A rule is a [`Condition`] evaluated on the tracks of every analysed
//! frame, plus the timing that turns it into an alert. Conditions are a
//! type with one variant per kind of cue, so that new kinds (eye closure,
//! PERCLOS, yawns, looking away, absence) are new variants beside
//! [`Condition::Expressions`]: a track's smoothed probability mass over an
//! expression set (the sum of the set's probabilities) reaching
//! `min_probability`. Each rule is a small state machine driven by frame
//! timestamps:
//!
//! ```text
//! Idle ──cond──► Pending ──cond held ≥ hold──► Active ──¬cond for ≥ clear_after──► Cooldown ──cooldown over──► Idle
//!   ▲              │ ¬cond                        ▲ cond again resets the clear timer
//!   └──────────────┘
//! ```

use std::time::Duration;

use crate::config::{Condition, RuleConfig};
use crate::expression::Expression;
use crate::track::Track;

/// Why an alert cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClearReason {
    /// The condition was false for `clear_after`.
    Condition,
    /// The input ended or the daemon is shutting down.
    Shutdown,
    /// The camera stopped delivering frames (unplugged, driver gone).
    CameraLost,
    /// Analysis failed for longer than `health.degraded_after`: ferd
    /// cannot see, so no alert may stay on.
    Degraded,
    /// The run ended on an error (a failed capture thread).
    Error,
}

impl ClearReason {
    /// Name used in events.
    pub fn name(self) -> &'static str {
        match self {
            ClearReason::Condition => "condition",
            ClearReason::Shutdown => "shutdown",
            ClearReason::CameraLost => "camera_lost",
            ClearReason::Degraded => "degraded",
            ClearReason::Error => "error",
        }
    }
}

/// A change of one alert's state.
#[derive(Debug, Clone, PartialEq)]
pub enum AlertChange {
    /// The alert became active.
    Raised {
        /// Rule name.
        alert: String,
        /// What met the condition.
        found: Match,
    },
    /// The alert became inactive.
    Cleared {
        /// Rule name.
        alert: String,
        /// How long it was active.
        duration: Duration,
        /// Why.
        reason: ClearReason,
    },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    Idle,
    Pending {
        since: Duration,
    },
    Active {
        since: Duration,
        false_since: Option<Duration>,
    },
    Cooldown {
        until: Duration,
    },
}

#[derive(Debug)]
struct Rule {
    cfg: RuleConfig,
    phase: Phase,
}

/// All rules of a configuration.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
}

/// Where and how a condition holds in one frame.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Match {
    /// The track that meets the condition (the strongest, if several do).
    pub track: u64,
    /// What was seen on it.
    pub cue: Cue,
}

/// The evidence of a [`Match`], one variant per kind of [`Condition`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Cue {
    /// [`Condition::Expressions`] held.
    Expression {
        /// The most probable expression of the set on the track.
        expression: Expression,
        /// The set's probability mass on the track.
        probability: f32,
    },
}

impl Condition {
    /// Evaluates the condition on the live tracks of one frame: the
    /// strongest match, if any.
    pub fn evaluate(&self, tracks: &[Track]) -> Option<Match> {
        match self {
            Condition::Expressions {
                expressions,
                min_probability,
            } => {
                let mut best: Option<Match> = None;
                let mut best_mass = f32::NEG_INFINITY;
                // Every live track counts, including one missed by the
                // detector in this frame: a flickering detection must not
                // restart the hold.
                for t in tracks {
                    let mut mass = 0.0;
                    let mut top = (Expression::Neutral, -1.0);
                    for &e in &expressions.0 {
                        let p = t.probs.get(e);
                        mass += p;
                        if p > top.1 {
                            top = (e, p);
                        }
                    }
                    if mass >= min_probability.0 && mass > best_mass {
                        best_mass = mass;
                        best = Some(Match {
                            track: t.id,
                            cue: Cue::Expression {
                                expression: top.0,
                                probability: mass,
                            },
                        });
                    }
                }
                best
            }
        }
    }
}

impl Rules {
    /// The rules of a configuration, all idle.
    pub fn new(configs: &[RuleConfig]) -> Rules {
        Rules {
            rules: configs
                .iter()
                .map(|cfg| Rule {
                    cfg: cfg.clone(),
                    phase: Phase::Idle,
                })
                .collect(),
        }
    }

    /// Names of the alerts active now, in config order.
    pub fn active(&self) -> impl Iterator<Item = &str> {
        self.rules
            .iter()
            .filter(|r| matches!(r.phase, Phase::Active { .. }))
            .map(|r| r.cfg.name.0.as_str())
    }

    /// Evaluates every rule on the tracks of the frame at time `t`.
    pub fn update(&mut self, t: Duration, tracks: &[Track], changes: &mut Vec<AlertChange>) {
        for rule in &mut self.rules {
            let cfg = &rule.cfg;
            let m = cfg.condition.evaluate(tracks);
            let hold = Duration::from_secs_f64(cfg.hold.0);
            let clear_after = Duration::from_secs_f64(cfg.clear_after.0);
            if let Phase::Cooldown { until } = rule.phase {
                if t >= until {
                    rule.phase = Phase::Idle;
                }
            }
            rule.phase = match (rule.phase, m) {
                (Phase::Idle, Some(found)) | (Phase::Pending { .. }, Some(found)) => {
                    let since = match rule.phase {
                        Phase::Pending { since } => since,
                        _ => t,
                    };
                    if t.saturating_sub(since) >= hold {
                        changes.push(AlertChange::Raised {
                            alert: cfg.name.0.clone(),
                            found,
                        });
                        Phase::Active {
                            since: t,
                            false_since: None,
                        }
                    } else {
                        Phase::Pending { since }
                    }
                }
                (Phase::Pending { .. }, None) => Phase::Idle,
                (Phase::Active { since, .. }, Some(_)) => Phase::Active {
                    since,
                    false_since: None,
                },
                (Phase::Active { since, false_since }, None) => {
                    let false_since = false_since.unwrap_or(t);
                    if t.saturating_sub(false_since) >= clear_after {
                        changes.push(AlertChange::Cleared {
                            alert: cfg.name.0.clone(),
                            duration: t.saturating_sub(since),
                            reason: ClearReason::Condition,
                        });
                        Phase::Cooldown {
                            until: t + Duration::from_secs_f64(cfg.cooldown.0),
                        }
                    } else {
                        Phase::Active {
                            since,
                            false_since: Some(false_since),
                        }
                    }
                }
                (phase, _) => phase,
            };
        }
    }

    /// Clears every active alert for `reason` and returns every rule to
    /// idle (a lost camera: nothing is known about the faces any more).
    pub fn clear_all(&mut self, t: Duration, reason: ClearReason, changes: &mut Vec<AlertChange>) {
        for rule in &mut self.rules {
            if let Phase::Active { since, .. } = rule.phase {
                changes.push(AlertChange::Cleared {
                    alert: rule.cfg.name.0.clone(),
                    duration: t.saturating_sub(since),
                    reason,
                });
            }
            rule.phase = Phase::Idle;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ExpressionSet, Probability, RuleName, Seconds};
    use crate::expression::Probs;
    use crate::vision::BBox;

    fn rule(hold: f64, clear_after: f64, cooldown: f64) -> RuleConfig {
        RuleConfig {
            name: RuleName("distress".into()),
            condition: Condition::Expressions {
                expressions: ExpressionSet(
                    [Expression::Angry, Expression::Fear, Expression::Sad].into(),
                ),
                min_probability: Probability(0.6),
            },
            hold: Seconds(hold),
            clear_after: Seconds(clear_after),
            cooldown: Seconds(cooldown),
        }
    }

    fn track(sad: f32) -> Track {
        let mut p = [0.0; 7];
        p[Expression::Sad.index()] = sad;
        p[Expression::Fear.index()] = 0.1;
        p[Expression::Neutral.index()] = 0.9 - sad;
        Track {
            id: 7,
            bbox: BBox::default(),
            score: 1.0,
            probs: Probs(p),
            first_seen: Duration::ZERO,
            last_seen: Duration::ZERO,
            seen_now: true,
        }
    }

    /// Runs the rules at 10 fps over (duration, sad-probability) segments;
    /// returns the changes with their times in ms.
    fn run(r: RuleConfig, segments: &[(u64, f32)]) -> Vec<(u64, AlertChange)> {
        let mut rules = Rules::new(&[r]);
        let mut out = Vec::new();
        let mut t = 0;
        for &(len, sad) in segments {
            for _ in 0..len / 100 {
                let mut ch = Vec::new();
                rules.update(Duration::from_millis(t), &[track(sad)], &mut ch);
                out.extend(ch.into_iter().map(|c| (t, c)));
                t += 100;
            }
        }
        out
    }

    #[test]
    fn raises_after_hold_and_clears_after_clear_time() {
        let ch = run(
            rule(3.0, 1.0, 0.0),
            &[(1000, 0.1), (5000, 0.6), (3000, 0.1)],
        );
        assert_eq!(ch.len(), 2, "{ch:?}");
        // Condition true from 1.0 s (sad 0.6 + fear 0.1 ≥ 0.6), held 3 s.
        assert_eq!(ch[0].0, 4000);
        assert!(matches!(
            &ch[0].1,
            AlertChange::Raised {
                found: Match {
                    track: 7,
                    cue: Cue::Expression {
                        expression: Expression::Sad,
                        ..
                    }
                },
                ..
            }
        ));
        // False from 6.0 s, clears 1 s later.
        assert_eq!(ch[1].0, 7000);
        assert!(matches!(
            &ch[1].1,
            AlertChange::Cleared {
                reason: ClearReason::Condition,
                ..
            }
        ));
    }

    #[test]
    fn interruption_restarts_the_hold() {
        let ch = run(rule(3.0, 1.0, 0.0), &[(2000, 0.6), (100, 0.1), (2500, 0.6)]);
        assert!(ch.is_empty(), "{ch:?}");
    }

    #[test]
    fn short_dip_does_not_clear() {
        let ch = run(rule(0.0, 1.0, 0.0), &[(1000, 0.6), (500, 0.1), (1000, 0.6)]);
        assert_eq!(ch.len(), 1, "{ch:?}");
    }

    #[test]
    fn cooldown_blocks_raising_again() {
        let ch = run(rule(0.0, 0.0, 5.0), &[(300, 0.6), (200, 0.1), (3000, 0.6)]);
        // Raised at 0, cleared at 0.3 s, cooldown until 5.3 s: input ends first.
        assert_eq!(ch.len(), 2, "{ch:?}");
        let ch = run(rule(0.0, 0.0, 1.0), &[(300, 0.6), (200, 0.1), (3000, 0.6)]);
        assert_eq!(ch.len(), 3, "{ch:?}");
        assert_eq!(ch[2].0, 1300);
    }

    #[test]
    fn clear_all_clears_active_alerts() {
        let mut rules = Rules::new(&[rule(0.0, 1.0, 0.0)]);
        let mut ch = Vec::new();
        rules.update(Duration::ZERO, &[track(0.8)], &mut ch);
        assert_eq!(rules.active().collect::<Vec<_>>(), vec!["distress"]);
        ch.clear();
        rules.clear_all(Duration::from_secs(2), ClearReason::Shutdown, &mut ch);
        assert!(
            matches!(&ch[0], AlertChange::Cleared { reason: ClearReason::Shutdown, duration, .. } if *duration == Duration::from_secs(2))
        );
        assert_eq!(rules.active().count(), 0);
    }
}
