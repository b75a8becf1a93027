//! Alert rules: turning tracked faces into alerts that rise and clear.
//!
//! A rule is a [`Condition`] evaluated on a [`Scene`] (the tracks of one
//! analysed frame, with their driver signals, and how long no face has been
//! seen), plus the timing that turns it into an alert. Conditions are a
//! type with one variant per kind of cue: [`Condition::Expressions`] (a
//! track's smoothed probability mass over an expression set reaching
//! `min_probability`), and the driver-state kinds, eye closure, PERCLOS,
//! yawns, looking away and absence, which read
//! [`crate::driver::DriverTrack`]. Each rule is a small state machine
//! driven by frame timestamps:
//!
//! ```text
//! Idle ──cond──► Pending ──cond held ≥ hold──► Active ──¬cond for ≥ clear_after──► Cooldown ──cooldown over──► Idle
//!   ▲              │ ¬cond                        ▲ cond again resets the clear timer
//!   └──────────────┘
//! ```

use std::time::Duration;

use crate::config::{Condition, RuleConfig};
use crate::driver::{Run, PERCLOS_MIN_COVERAGE};
use crate::expression::Expression;
use crate::track::Track;

/// The track of a match that is about no face ([`Condition::FaceAbsent`]):
/// track ids start at 1, so 0 is never a face.
pub const NO_TRACK: u64 = 0;

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
    /// A configuration reload removed or changed the alert's rule.
    Reload,
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
            ClearReason::Reload => "reload",
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
    memory: ConditionMemory,
}

/// All rules of a configuration.
#[derive(Debug)]
pub struct Rules {
    rules: Vec<Rule>,
    /// Frame time a face was last observed, or where counting began (the
    /// first frame, or the first after [`Rules::clear_all`]); `None`
    /// before then.
    face_seen_at: Option<Duration>,
}

/// What a condition is evaluated on: one analysed frame.
#[derive(Debug, Clone, Copy)]
pub struct Scene<'a> {
    /// Frame time.
    pub t: Duration,
    /// The live tracks, each with its driver signals
    /// ([`Track::driver`]), including those missed in this frame.
    pub tracks: &'a [Track],
    /// How long no face at all has been observed: since the last frame
    /// with one, or since the stream began if none was yet.
    pub face_absent_for: Duration,
}

/// What a condition keeps between frames. Only
/// [`Condition::LookingAway`] needs it: how long a head has been turned
/// away depends on the rule's own limits, so each such rule follows a
/// [`Run`] per track rather than the track keeping one per possible
/// limit pair.
#[derive(Debug, Clone, Default)]
pub struct ConditionMemory {
    away: Vec<Away>,
}

/// One track's looking-away run for one rule.
#[derive(Debug, Clone, Copy)]
struct Away {
    track: u64,
    run: Run,
    /// The latest pose beyond the limits, reported when the rule raises
    /// on a frame without a pose (a bridged gap).
    pose: (f32, f32),
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
    /// [`Condition::EyesClosed`] held.
    EyesClosed {
        /// How long the closure has lasted.
        seconds: Duration,
    },
    /// [`Condition::Perclos`] held.
    Perclos {
        /// PERCLOS over the rule's window.
        perclos: f32,
    },
    /// [`Condition::Yawns`] held.
    Yawns {
        /// Yawns in the rule's window.
        count: u32,
    },
    /// [`Condition::LookingAway`] held.
    LookingAway {
        /// Head yaw of the latest frame with a pose, degrees.
        yaw: f32,
        /// Head pitch of that frame, degrees.
        pitch: f32,
        /// How long the head has been turned away.
        seconds: Duration,
    },
    /// [`Condition::FaceAbsent`] held (the match's track is [`NO_TRACK`]).
    FaceAbsent {
        /// How long no face has been seen.
        seconds: Duration,
    },
}

/// The track with the largest `value` among those that have one.
fn strongest<V: PartialOrd + Copy>(
    tracks: &[Track],
    mut value: impl FnMut(&Track) -> Option<V>,
) -> Option<(&Track, V)> {
    let mut best: Option<(&Track, V)> = None;
    for t in tracks {
        if let Some(v) = value(t) {
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((t, v));
            }
        }
    }
    best
}

impl Condition {
    /// Evaluates the condition on one frame: the strongest match, if any.
    /// `memory` is this rule's own, kept from frame to frame.
    pub fn evaluate(&self, scene: &Scene<'_>, memory: &mut ConditionMemory) -> Option<Match> {
        let t = scene.t;
        let tracks = scene.tracks;
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
            Condition::EyesClosed { seconds } => {
                let min = Duration::from_secs_f64(seconds.0);
                strongest(tracks, |tr| tr.driver.closed_for(t).filter(|&c| c >= min)).map(
                    |(tr, c)| Match {
                        track: tr.id,
                        cue: Cue::EyesClosed { seconds: c },
                    },
                )
            }
            Condition::Perclos { above, window } => {
                let window = Duration::from_secs_f64(window.0);
                strongest(tracks, |tr| {
                    let p = tr.driver.perclos(t, window);
                    // Too little known time says nothing about a window
                    // (a fresh track, eyes mostly hidden).
                    p.value
                        .filter(|&v| v > above.0 && p.coverage >= PERCLOS_MIN_COVERAGE)
                })
                .map(|(tr, v)| Match {
                    track: tr.id,
                    cue: Cue::Perclos { perclos: v },
                })
            }
            Condition::Yawns { count, window } => {
                let window = Duration::from_secs_f64(window.0);
                strongest(tracks, |tr| {
                    let n = u32::try_from(tr.driver.yawns(t, window)).unwrap_or(u32::MAX);
                    (n >= count.0).then_some(n)
                })
                .map(|(tr, n)| Match {
                    track: tr.id,
                    cue: Cue::Yawns { count: n },
                })
            }
            Condition::LookingAway {
                seconds,
                max_yaw,
                max_pitch,
            } => {
                let min = Duration::from_secs_f64(seconds.0);
                memory
                    .away
                    .retain(|a| tracks.iter().any(|tr| tr.id == a.track));
                let mut best: Option<Match> = None;
                let mut longest = Duration::ZERO;
                for tr in tracks {
                    let i = match memory.away.iter().position(|a| a.track == tr.id) {
                        Some(i) => i,
                        None => {
                            memory.away.push(Away {
                                track: tr.id,
                                run: Run::default(),
                                pose: (0.0, 0.0),
                            });
                            memory.away.len() - 1
                        }
                    };
                    let away = &mut memory.away[i];
                    let beyond = tr
                        .driver
                        .pose()
                        .map(|(y, p)| (y.abs() > max_yaw.0 || p.abs() > max_pitch.0, (y, p)));
                    if let Some((true, pose)) = beyond {
                        away.pose = pose;
                    }
                    away.run.update(t, beyond.map(|b| b.0));
                    let Some(len) = away.run.length(t) else {
                        continue;
                    };
                    if len >= min && (best.is_none() || len > longest) {
                        longest = len;
                        best = Some(Match {
                            track: tr.id,
                            cue: Cue::LookingAway {
                                yaw: away.pose.0,
                                pitch: away.pose.1,
                                seconds: len,
                            },
                        });
                    }
                }
                best
            }
            Condition::FaceAbsent { seconds } => {
                let min = Duration::from_secs_f64(seconds.0);
                (scene.face_absent_for >= min).then_some(Match {
                    track: NO_TRACK,
                    cue: Cue::FaceAbsent {
                        seconds: scene.face_absent_for,
                    },
                })
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
                    memory: ConditionMemory::default(),
                })
                .collect(),
            face_seen_at: None,
        }
    }

    /// Whether some rule needs to see the eyes (eye closure, PERCLOS):
    /// then eyes that stay unknown mean the driver is unwatched.
    pub fn watches_eyes(&self) -> bool {
        self.rules
            .iter()
            .any(|r| r.cfg.condition.kind().watches_eyes())
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
        if self.face_seen_at.is_none() || tracks.iter().any(|tr| tr.seen_now) {
            self.face_seen_at = Some(t);
        }
        let scene = Scene {
            t,
            tracks,
            face_absent_for: t.saturating_sub(self.face_seen_at.unwrap_or(t)),
        };
        for rule in &mut self.rules {
            let cfg = &rule.cfg;
            let m = cfg.condition.evaluate(&scene, &mut rule.memory);
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

    /// Switches to the rules of a reloaded configuration at frame time
    /// `t`. A rule whose name and settings are unchanged keeps its state
    /// (an active alert stays active, a pending hold keeps counting); an
    /// active alert whose rule was removed or changed is cleared
    /// (`reason: reload`), and changed or new rules start idle.
    pub fn reconfigure(
        &mut self,
        configs: &[RuleConfig],
        t: Duration,
        changes: &mut Vec<AlertChange>,
    ) {
        let mut old = std::mem::take(&mut self.rules);
        for rule in &old {
            let kept = configs.contains(&rule.cfg);
            if let (false, Phase::Active { since, .. }) = (kept, rule.phase) {
                changes.push(AlertChange::Cleared {
                    alert: rule.cfg.name.0.clone(),
                    duration: t.saturating_sub(since),
                    reason: ClearReason::Reload,
                });
            }
        }
        self.rules = configs
            .iter()
            .map(|cfg| match old.iter().position(|r| r.cfg == *cfg) {
                Some(i) => old.swap_remove(i),
                None => Rule {
                    cfg: cfg.clone(),
                    phase: Phase::Idle,
                    memory: ConditionMemory::default(),
                },
            })
            .collect();
    }

    /// Clears every active alert for `reason` and returns every rule to
    /// idle (a lost camera: nothing is known about the faces any more).
    /// Absence is counted again from the next frame: time ferd could not
    /// see is not time it saw no face.
    pub fn clear_all(&mut self, t: Duration, reason: ClearReason, changes: &mut Vec<AlertChange>) {
        self.face_seen_at = None;
        for rule in &mut self.rules {
            rule.memory = ConditionMemory::default();
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
    use crate::config::{
        AngleLimit, ExpressionSet, HistoryWindow, PositiveSeconds, PositiveU32, Probability,
        Proportion, RuleName, Seconds,
    };
    use crate::driver::{DriverTrack, FaceMeasure};
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
            driver: DriverTrack::new(),
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
    fn reconfigure_keeps_unchanged_rules_and_clears_removed_or_changed_ones() {
        let named = |name: &str, hold: f64| RuleConfig {
            name: RuleName(name.into()),
            ..rule(hold, 1.0, 0.0)
        };
        let (a, b, c) = (named("a", 0.0), named("b", 0.0), named("c", 0.0));
        let mut rules = Rules::new(&[a.clone(), b.clone(), c.clone()]);
        let mut ch = Vec::new();
        rules.update(Duration::from_secs(1), &[track(0.6)], &mut ch);
        assert_eq!(rules.active().collect::<Vec<_>>(), ["a", "b", "c"]);
        // `a` kept as is, `b` changed (a longer hold), `c` removed, `d` new.
        ch.clear();
        let b2 = named("b", 5.0);
        rules.reconfigure(&[named("d", 0.0), a, b2], Duration::from_secs(3), &mut ch);
        let cleared: Vec<_> = ch
            .iter()
            .map(|c| match c {
                AlertChange::Cleared {
                    alert,
                    duration,
                    reason: ClearReason::Reload,
                } => (alert.as_str(), duration.as_secs()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(cleared, [("b", 2), ("c", 2)]);
        // The kept alert is still active, in the new order; no second
        // `raised` for it; `d` raises at once, `b` must hold 5 s again.
        assert_eq!(rules.active().collect::<Vec<_>>(), ["a"]);
        ch.clear();
        rules.update(Duration::from_secs(4), &[track(0.6)], &mut ch);
        let raised: Vec<_> = ch
            .iter()
            .map(|c| match c {
                AlertChange::Raised { alert, .. } => alert.as_str(),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(raised, ["d"]);
        assert_eq!(rules.active().collect::<Vec<_>>(), ["d", "a"]);
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
    /// A rule of `condition` with the driver kinds' defaults (hold 0,
    /// clear_after 1 s).
    fn driver_rule(name: &str, condition: Condition) -> RuleConfig {
        RuleConfig {
            name: RuleName(name.into()),
            condition,
            hold: Seconds(0.0),
            clear_after: Seconds(1.0),
            cooldown: Seconds(0.0),
        }
    }

    fn eyes_closed(s: f64) -> RuleConfig {
        driver_rule(
            "eyes_closed",
            Condition::EyesClosed {
                seconds: PositiveSeconds(s),
            },
        )
    }

    /// Open eyes facing the camera, mouth shut.
    fn open() -> FaceMeasure {
        FaceMeasure {
            eyes: [Some(0.28); 2],
            mouth: Some(0.1),
            pose: Some((0.0, 0.0)),
        }
    }

    /// Frame `n` at `fps`, exactly.
    fn at(n: u64, fps: u64) -> Duration {
        Duration::from_nanos(n * 1_000_000_000 / fps)
    }

    /// Runs `rules` over `frames` frames at `fps` of one track (id 7)
    /// whose measures `plan` gives (`None`: no face in that frame);
    /// returns the changes with their frame numbers.
    fn drive(
        rules: &[RuleConfig],
        fps: u64,
        frames: u64,
        plan: impl Fn(Duration) -> Option<FaceMeasure>,
    ) -> Vec<(u64, AlertChange)> {
        let mut rules = Rules::new(rules);
        let mut tr = track(0.0);
        let mut out = Vec::new();
        for n in 0..frames {
            let t = at(n, fps);
            let m = plan(t);
            tr.seen_now = m.is_some();
            tr.driver.update(t, m.as_ref());
            let tracks = if m.is_some() {
                std::slice::from_ref(&tr)
            } else {
                &[]
            };
            let mut ch = Vec::new();
            rules.update(t, tracks, &mut ch);
            out.extend(ch.into_iter().map(|c| (n, c)));
        }
        out
    }

    /// Open, with the eyes closed (0.03) over `closed` (seconds).
    fn closed_during(closed: &[(f64, f64)]) -> impl Fn(Duration) -> Option<FaceMeasure> + '_ {
        move |t| {
            let s = t.as_secs_f64();
            let mut m = open();
            if closed.iter().any(|&(a, b)| s >= a && s < b) {
                m.eyes = [Some(0.03); 2];
            }
            Some(m)
        }
    }

    #[test]
    fn eyes_closed_raises_on_the_frame_the_closure_reaches_the_threshold() {
        // A 2.2 s closure from 3 s at 24 fps: onset frame 72.
        let ch = drive(&[eyes_closed(2.0)], 24, 240, closed_during(&[(3.0, 5.2)]));
        assert_eq!(ch.len(), 2, "{ch:?}");
        let (n, raised) = &ch[0];
        assert_eq!(*n, 72 + 48, "2.0 s after onset");
        assert!(
            matches!(raised, AlertChange::Raised { alert, found: Match { track: 7, cue: Cue::EyesClosed { seconds } } }
                if alert == "eyes_closed" && *seconds == Duration::from_secs(2)),
            "{raised:?}"
        );
        // Reopened at frame 125 (5.2 s), confirmed at the 2nd open frame;
        // cleared 1 s (clear_after) later.
        let (n, cleared) = &ch[1];
        assert!(
            matches!(
                cleared,
                AlertChange::Cleared {
                    reason: ClearReason::Condition,
                    ..
                }
            ),
            "{cleared:?}"
        );
        assert_eq!(*n, 126 + 24);
        // 1.8 s: never.
        let ch = drive(&[eyes_closed(2.0)], 24, 240, closed_during(&[(3.0, 4.8)]));
        assert!(ch.is_empty(), "{ch:?}");
    }

    #[test]
    fn blink_trains_never_raise_eyes_closed() {
        // 20 blinks of 300 ms with 700 ms open between, then 20 of 400 ms
        // with 100 ms between.
        let mut closures = Vec::new();
        for i in 0..20 {
            let a = 1.0 + i as f64;
            closures.push((a, a + 0.3));
        }
        for i in 0..20 {
            let a = 22.0 + i as f64 * 0.5;
            closures.push((a, a + 0.4));
        }
        let ch = drive(&[eyes_closed(2.0)], 24, 24 * 35, closed_during(&closures));
        assert!(ch.is_empty(), "{ch:?}");
        // Even with a short threshold, no blink adds to the next.
        let ch = drive(&[eyes_closed(0.5)], 24, 24 * 35, closed_during(&closures));
        assert!(ch.is_empty(), "{ch:?}");
    }

    #[test]
    fn perclos_raises_above_its_threshold_once_the_window_is_known() {
        let rule = driver_rule(
            "drowsy",
            Condition::Perclos {
                above: Proportion(0.15),
                window: HistoryWindow(60.0),
            },
        );
        // 1 s closed in every 5 s: PERCLOS 0.2 from the start.
        let closures: Vec<(f64, f64)> = (0..30)
            .map(|i| (i as f64 * 5.0, i as f64 * 5.0 + 1.0))
            .collect();
        let ch = drive(
            std::slice::from_ref(&rule),
            10,
            1000,
            closed_during(&closures),
        );
        assert_eq!(ch.len(), 1, "{ch:?}");
        // Not before half the window (30 s) is known.
        assert_eq!(ch[0].0, 300);
        assert!(
            matches!(ch[0].1, AlertChange::Raised { found: Match { cue: Cue::Perclos { perclos }, .. }, .. }
                if (perclos - 0.2).abs() < 0.02),
            "{ch:?}"
        );
        // 1 s in 10 s: 0.1, never.
        let closures: Vec<(f64, f64)> = (0..30)
            .map(|i| (i as f64 * 10.0, i as f64 * 10.0 + 1.0))
            .collect();
        let ch = drive(&[rule], 10, 1000, closed_during(&closures));
        assert!(ch.is_empty(), "{ch:?}");
    }

    #[test]
    fn yawns_raise_at_the_count() {
        let rule = driver_rule(
            "yawning",
            Condition::Yawns {
                count: PositiveU32(3),
                window: HistoryWindow(300.0),
            },
        );
        // A 2 s yawn every 10 s from 5 s: the third counts at 26.5 s.
        let plan = |t: Duration| {
            let s = t.as_secs_f64();
            let mut m = open();
            if s >= 5.0 && (s - 5.0) % 10.0 < 2.0 {
                m.mouth = Some(0.8);
            }
            Some(m)
        };
        let ch = drive(&[rule], 10, 400, plan);
        assert_eq!(ch.len(), 1, "{ch:?}");
        assert_eq!(ch[0].0, 265);
        assert!(matches!(
            ch[0].1,
            AlertChange::Raised {
                found: Match {
                    cue: Cue::Yawns { count: 3 },
                    ..
                },
                ..
            }
        ));
    }

    #[test]
    fn looking_away_rules_each_follow_their_own_limits() {
        let away = |name: &str, max_yaw: f32| {
            driver_rule(
                name,
                Condition::LookingAway {
                    seconds: PositiveSeconds(3.0),
                    max_yaw: AngleLimit(max_yaw),
                    max_pitch: AngleLimit(20.0),
                },
            )
        };
        // Yaw 40° from 2 s to 8 s, with a 0.2 s unmeasurable stretch at
        // 4 s (bridged).
        let plan = |t: Duration| {
            let s = t.as_secs_f64();
            let mut m = open();
            if (4.0..4.2).contains(&s) {
                m.pose = None;
            } else if (2.0..8.0).contains(&s) {
                m.pose = Some((-40.0, 5.0));
            }
            Some(m)
        };
        let ch = drive(&[away("wide", 45.0), away("narrow", 30.0)], 10, 120, plan);
        assert_eq!(ch.len(), 2, "{ch:?}");
        assert_eq!(ch[0].0, 50, "narrow: 3 s after 2 s");
        assert!(
            matches!(&ch[0].1, AlertChange::Raised { alert, found: Match { cue: Cue::LookingAway { yaw, pitch, seconds }, .. } }
                if alert == "narrow" && *yaw == -40.0 && *pitch == 5.0 && *seconds == Duration::from_secs(3)),
            "{ch:?}"
        );
        assert!(matches!(&ch[1], (90, AlertChange::Cleared { alert, .. }) if alert == "narrow"));
    }

    #[test]
    fn face_absent_counts_from_the_last_face_or_the_stream_start() {
        let rule = driver_rule(
            "absent",
            Condition::FaceAbsent {
                seconds: PositiveSeconds(6.0),
            },
        );
        // No face for 7 s from the start, a face 7-10 s, none after.
        let plan = |t: Duration| (7.0..10.0).contains(&t.as_secs_f64()).then(open);
        let ch = drive(&[rule], 10, 200, plan);
        assert_eq!(ch.len(), 3, "{ch:?}");
        assert!(
            matches!(&ch[0], (60, AlertChange::Raised { found: Match { track: NO_TRACK, cue: Cue::FaceAbsent { seconds } }, .. })
                if *seconds == Duration::from_secs(6)),
            "{ch:?}"
        );
        assert!(matches!(&ch[1], (80, AlertChange::Cleared { .. })));
        // Last face at 9.9 s: 6 s later.
        assert_eq!(ch[2].0, 159);
    }

    #[test]
    fn rules_know_whether_they_watch_the_eyes() {
        assert!(!Rules::new(&[rule(1.0, 1.0, 0.0)]).watches_eyes());
        assert!(Rules::new(&[rule(1.0, 1.0, 0.0), eyes_closed(2.0)]).watches_eyes());
    }
}
