//! The status screen, drawn on any embedded-graphics [`DrawTarget`].
//!
//! The layout is made for a 128×64 monochrome panel (an SSD1306, the
//! commonest hobby display); bigger targets get the same picture, scaled
//! by their backend. Keeping one renderer behind `DrawTarget` is what lets
//! the PNG file in the tests stand for what a panel shows.
//!
//! ```text
//! ┌────────────────────────────┐
//! │HAPPY 87%         2 faces   │  top expression of the main face, face count
//! │ang ▇                     3 │
//! │...  one bar per expression │
//! │neu ▇▇▇                  10 │
//! │█████ ! DISTRESS ███████████│  banner while an alert is active
//! └────────────────────────────┘
//! ```
//!
//! With a rule that watches the eyes (`eyes_closed_for`, `perclos`) the
//! screen carries a [`DriverLine`] and the middle changes: the eye state
//! and PERCLOS in the large font, where a driver can read them at a
//! glance, and the seven expressions as short columns below.
//!
//! ```text
//! ┌────────────────────────────┐
//! │HAPPY 87%          1 face   │
//! │EYES CLOSED 2.4s            │  eye state of the main face, closure so far
//! │PERCLOS 12%                 │  over the last 60 s, "--" while too little is known
//! │ ▁   ▁   ▂   ▇   ▁   ▁   ▃  │  one column per expression
//! │ang dis fea hap sad sur neu │
//! │█████ ! EYES_CLOSED ████████│
//! └────────────────────────────┘
//! ```
//!
//! While the driver is unwatched (no eye state known for 10 s) the first
//! line reads `NO EYES` and, unless an alert or the degraded state holds
//! it, the banner says `? CANNOT SEE EYES`.

use std::fmt::Write as _;
use std::time::Duration;

use embedded_graphics::mono_font::ascii::{FONT_4X6, FONT_6X10};
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::BinaryColor;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Baseline, Text, TextStyleBuilder};

use crate::driver::EyeState;
use crate::expression::{Expression, Probs};

/// Logical size of the status screen.
pub const SCREEN_SIZE: Size = Size::new(128, 64);

/// What the status screen shows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StatusScreen {
    /// Faces tracked now.
    pub faces: usize,
    /// Smoothed probabilities of the main (largest) face, if any.
    pub probs: Option<Probs>,
    /// Names of the active alerts.
    pub alerts: Vec<String>,
    /// ferd is degraded (cannot see): the banner says so instead.
    pub degraded: bool,
    /// The driver's eyes, only when a rule watches them; `None` keeps the
    /// expression-only layout.
    pub driver: Option<DriverLine>,
}

/// What the status screen shows of the driver's eyes (see the module
/// documentation for the layout).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DriverLine {
    /// Eye state of the main face; [`EyeState::Unknown`] without a face.
    pub eyes: EyeState,
    /// How long the current closure has lasted, while the eyes are in one.
    pub closed_for: Option<Duration>,
    /// PERCLOS (0 to 1) of the main face over the last 60 s; `None` while
    /// too little of that window had a known eye state to mean anything.
    pub perclos: Option<f32>,
    /// Whether ferd can watch the driver: `false` from `driver_unwatched`
    /// until `driver_watched`.
    pub watching: bool,
}

impl Default for DriverLine {
    fn default() -> Self {
        DriverLine {
            eyes: EyeState::Unknown,
            closed_for: None,
            perclos: None,
            watching: true,
        }
    }
}

/// Why a display could not be updated; names the device or file.
#[derive(Debug, thiserror::Error)]
#[error("display {target}: {message}")]
pub struct DisplayError {
    /// The device or file.
    pub target: String,
    /// What failed.
    pub message: String,
}

/// A device that shows the status screen.
pub trait Display {
    /// Shows a new state (backends may skip unchanged pictures).
    fn show(&mut self, screen: &StatusScreen) -> Result<(), DisplayError>;
    /// Puts the display in its safe state before exit.
    fn shutdown(&mut self) -> Result<(), DisplayError>;
}

/// Several displays showing the same screen (e.g. a panel and a PNG
/// record of it). Every backend is tried; the first error is returned.
pub struct Fanout(pub Vec<Box<dyn Display + Send>>);

impl Display for Fanout {
    fn show(&mut self, screen: &StatusScreen) -> Result<(), DisplayError> {
        let mut first = Ok(());
        for d in &mut self.0 {
            if let Err(e) = d.show(screen) {
                first = first.and(Err(e));
            }
        }
        first
    }

    fn shutdown(&mut self) -> Result<(), DisplayError> {
        let mut first = Ok(());
        for d in &mut self.0 {
            if let Err(e) = d.shutdown() {
                first = first.and(Err(e));
            }
        }
        first
    }
}

impl StatusScreen {
    /// Draws the screen onto a target at least [`SCREEN_SIZE`] large.
    pub fn draw<D: DrawTarget<Color = BinaryColor>>(&self, d: &mut D) -> Result<(), D::Error> {
        d.clear(BinaryColor::Off)?;
        let big = MonoTextStyle::new(&FONT_6X10, BinaryColor::On);
        let small = MonoTextStyle::new(&FONT_4X6, BinaryColor::On);
        let top_left = TextStyleBuilder::new().baseline(Baseline::Top).build();
        let top_right = TextStyleBuilder::new()
            .baseline(Baseline::Top)
            .alignment(Alignment::Right)
            .build();
        let mut s = String::with_capacity(24);

        match self.probs {
            Some(p) => {
                let (e, v) = p.top();
                let _ = write!(s, "{} {:.0}%", e.name().to_uppercase(), v * 100.0);
            }
            None => s.push_str("no face"),
        }
        Text::with_text_style(&s, Point::new(0, 0), big, top_left).draw(d)?;
        s.clear();
        let _ = write!(
            s,
            "{} face{}",
            self.faces,
            if self.faces == 1 { "" } else { "s" }
        );
        Text::with_text_style(&s, Point::new(127, 0), big, top_right).draw(d)?;

        match &self.driver {
            None => self.draw_bars(d, small)?,
            Some(driver) => self.draw_driver(d, driver, big, small)?,
        }

        // Alerts are cleared while degraded, so the two banners never
        // compete; an unavailable system must not look like a calm one.
        // An unwatched driver yields to alerts (they are what the driver
        // must act on) and keeps its `NO EYES` line above.
        let unwatched = self.driver.is_some_and(|l| !l.watching);
        if self.degraded || !self.alerts.is_empty() || unwatched {
            Rectangle::new(Point::new(0, 54), Size::new(128, 10))
                .into_styled(PrimitiveStyle::with_fill(BinaryColor::On))
                .draw(d)?;
            s.clear();
            if self.degraded {
                s.push_str("? NOT WATCHING");
            } else if self.alerts.is_empty() {
                s.push_str("? CANNOT SEE EYES");
            } else {
                s.push_str("! ");
                for (i, a) in self.alerts.iter().enumerate() {
                    if i > 0 {
                        s.push(' ');
                    }
                    s.push_str(&a.to_uppercase());
                }
            }
            let inverse = MonoTextStyle::new(&FONT_6X10, BinaryColor::Off);
            Text::with_text_style(
                &s,
                Point::new(64, 54),
                inverse,
                TextStyleBuilder::new()
                    .baseline(Baseline::Top)
                    .alignment(Alignment::Center)
                    .build(),
            )
            .draw(d)?;
        }
        Ok(())
    }

    /// The expression-only middle: seven rows of 6 px from y = 11, a
    /// 3-letter label in 4×6, a bar of 4 px, the percentage right-aligned.
    fn draw_bars<D: DrawTarget<Color = BinaryColor>>(
        &self,
        d: &mut D,
        small: MonoTextStyle<'_, BinaryColor>,
    ) -> Result<(), D::Error> {
        const BAR_X: i32 = 14;
        const BAR_MAX: u32 = 98;
        let Some(p) = self.probs else {
            return Ok(());
        };
        let top_left = TextStyleBuilder::new().baseline(Baseline::Top).build();
        let top_right = TextStyleBuilder::new()
            .baseline(Baseline::Top)
            .alignment(Alignment::Right)
            .build();
        let mut s = String::with_capacity(4);
        for (i, e) in Expression::ALL.into_iter().enumerate() {
            let y = 11 + 6 * i as i32;
            Text::with_text_style(&e.name()[..3], Point::new(0, y - 1), small, top_left).draw(d)?;
            let len = (p.get(e).clamp(0.0, 1.0) * BAR_MAX as f32).round() as u32;
            if len > 0 {
                Rectangle::new(Point::new(BAR_X, y + 1), Size::new(len, 4))
                    .into_styled(PrimitiveStyle::with_fill(BinaryColor::On))
                    .draw(d)?;
            }
            s.clear();
            let _ = write!(s, "{:.0}", p.get(e) * 100.0);
            Text::with_text_style(&s, Point::new(127, y), small, top_right).draw(d)?;
        }
        Ok(())
    }

    /// The driver middle: the eye state (y = 12) and PERCLOS (y = 23) in
    /// 6×10, then the expressions as seven columns of 18 px, bars growing
    /// up from y = 45 (at most 11 px) over their 3-letter labels at y = 48,
    /// two rows apart so that a short bar does not read as an overline.
    /// The percentages give way: the top one is in the header.
    fn draw_driver<D: DrawTarget<Color = BinaryColor>>(
        &self,
        d: &mut D,
        driver: &DriverLine,
        big: MonoTextStyle<'_, BinaryColor>,
        small: MonoTextStyle<'_, BinaryColor>,
    ) -> Result<(), D::Error> {
        const COLUMN: i32 = 18;
        const BAR_BOTTOM: i32 = 45;
        const BAR_MAX: u32 = 11;
        let top_left = TextStyleBuilder::new().baseline(Baseline::Top).build();
        let top_center = TextStyleBuilder::new()
            .baseline(Baseline::Top)
            .alignment(Alignment::Center)
            .build();
        let mut s = String::with_capacity(24);
        eye_text(driver, &mut s);
        Text::with_text_style(&s, Point::new(0, 12), big, top_left).draw(d)?;
        s.clear();
        s.push_str("PERCLOS ");
        match driver.perclos.filter(|p| p.is_finite()) {
            Some(p) => {
                let _ = write!(s, "{:.0}%", p.clamp(0.0, 1.0) * 100.0);
            }
            None => s.push_str("--"),
        }
        Text::with_text_style(&s, Point::new(0, 23), big, top_left).draw(d)?;

        let Some(p) = self.probs else {
            return Ok(());
        };
        for (i, e) in Expression::ALL.into_iter().enumerate() {
            // 7 × 18 = 126: one spare pixel each side.
            let x = 1 + COLUMN * i as i32;
            let h = (p.get(e).clamp(0.0, 1.0) * BAR_MAX as f32).round() as u32;
            if h > 0 {
                Rectangle::new(
                    Point::new(x + 4, BAR_BOTTOM + 1 - h as i32),
                    Size::new(10, h),
                )
                .into_styled(PrimitiveStyle::with_fill(BinaryColor::On))
                .draw(d)?;
            }
            Text::with_text_style(
                &e.name()[..3],
                Point::new(x + COLUMN / 2, 48),
                small,
                top_center,
            )
            .draw(d)?;
        }
        Ok(())
    }
}

/// The eye line's words: `NO EYES` while unwatched, else the eye state,
/// with the closure's length while closed (capped: a number wider than
/// the screen says nothing more).
fn eye_text(driver: &DriverLine, s: &mut String) {
    if !driver.watching {
        s.push_str("NO EYES");
        return;
    }
    match driver.eyes {
        EyeState::Open => s.push_str("EYES OPEN"),
        EyeState::Unknown => s.push_str("EYES ?"),
        EyeState::Closed => {
            s.push_str("EYES CLOSED");
            if let Some(c) = driver.closed_for {
                let secs = c.as_secs_f64();
                let _ = if secs < 100.0 {
                    write!(s, " {secs:.1}s")
                } else if secs < 1000.0 {
                    write!(s, " {secs:.0}s")
                } else {
                    write!(s, " >999s")
                };
            }
        }
    }
}

/// A 1-bit frame buffer of [`SCREEN_SIZE`] implementing `DrawTarget`; the
/// in-memory canvas the PNG and framebuffer backends render through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canvas {
    pixels: Vec<bool>,
}

impl Default for Canvas {
    fn default() -> Self {
        Canvas {
            pixels: vec![false; (SCREEN_SIZE.width * SCREEN_SIZE.height) as usize],
        }
    }
}

impl Canvas {
    /// Whether pixel `(x, y)` is lit; `false` outside.
    pub fn get(&self, x: u32, y: u32) -> bool {
        x < SCREEN_SIZE.width
            && y < SCREEN_SIZE.height
            && self.pixels[(y * SCREEN_SIZE.width + x) as usize]
    }
}

impl OriginDimensions for Canvas {
    fn size(&self) -> Size {
        SCREEN_SIZE
    }
}

impl DrawTarget for Canvas {
    type Color = BinaryColor;
    type Error = core::convert::Infallible;

    fn draw_iter<I>(&mut self, pixels: I) -> Result<(), Self::Error>
    where
        I: IntoIterator<Item = Pixel<Self::Color>>,
    {
        for Pixel(p, c) in pixels {
            if p.x >= 0
                && p.y >= 0
                && (p.x as u32) < SCREEN_SIZE.width
                && (p.y as u32) < SCREEN_SIZE.height
            {
                self.pixels[(p.y as u32 * SCREEN_SIZE.width + p.x as u32) as usize] = c.is_on();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(c: &Canvas, x0: u32, y0: u32, x1: u32, y1: u32) -> usize {
        (y0..y1)
            .flat_map(|y| (x0..x1).map(move |x| (x, y)))
            .filter(|&(x, y)| c.get(x, y))
            .count()
    }

    #[test]
    fn banner_only_with_alert() {
        let mut c = Canvas::default();
        let mut s = StatusScreen::default();
        s.draw(&mut c).unwrap();
        assert_eq!(lit(&c, 0, 54, 128, 64), 0);
        s.alerts.push("distress".into());
        s.draw(&mut c).unwrap();
        // The banner is mostly lit (inverse text cuts into it).
        assert!(lit(&c, 0, 54, 128, 64) > 128 * 10 / 2);
    }

    #[test]
    fn degraded_screen_has_its_own_banner() {
        let mut alert = Canvas::default();
        StatusScreen {
            alerts: vec!["distress".into()],
            ..StatusScreen::default()
        }
        .draw(&mut alert)
        .unwrap();
        let mut degraded = Canvas::default();
        StatusScreen {
            degraded: true,
            ..StatusScreen::default()
        }
        .draw(&mut degraded)
        .unwrap();
        assert!(lit(&degraded, 0, 54, 128, 64) > 128 * 10 / 2);
        assert_ne!(alert, degraded);
    }

    #[test]
    fn bar_length_follows_probability() {
        let mut p = [0.0; 7];
        p[Expression::Happy.index()] = 1.0;
        let s = StatusScreen {
            faces: 1,
            probs: Some(Probs(p)),
            alerts: vec![],
            degraded: false,
            driver: None,
        };
        let mut c = Canvas::default();
        s.draw(&mut c).unwrap();
        let happy_row = 11 + 6 * 3 + 2;
        let angry_row = 11 + 2;
        assert_eq!(lit(&c, 14, happy_row, 14 + 98, happy_row + 1), 98);
        assert_eq!(lit(&c, 14, angry_row, 14 + 98, angry_row + 1), 0);
    }

    fn text(driver: DriverLine) -> String {
        let mut s = String::new();
        eye_text(&driver, &mut s);
        s
    }

    #[test]
    fn eye_line_says_state_closure_and_unwatched() {
        let closed = |secs: f64| DriverLine {
            eyes: EyeState::Closed,
            closed_for: Some(Duration::from_secs_f64(secs)),
            ..DriverLine::default()
        };
        assert_eq!(text(DriverLine::default()), "EYES ?");
        assert_eq!(
            text(DriverLine {
                eyes: EyeState::Open,
                ..DriverLine::default()
            }),
            "EYES OPEN"
        );
        assert_eq!(text(closed(2.44)), "EYES CLOSED 2.4s");
        assert_eq!(text(closed(123.4)), "EYES CLOSED 123s");
        assert_eq!(text(closed(1e9)), "EYES CLOSED >999s");
        assert_eq!(
            text(DriverLine {
                watching: false,
                ..DriverLine::default()
            }),
            "NO EYES"
        );
    }

    #[test]
    fn unwatched_driver_takes_the_banner_only_when_it_is_free() {
        let unwatched = StatusScreen {
            driver: Some(DriverLine {
                watching: false,
                ..DriverLine::default()
            }),
            ..StatusScreen::default()
        };
        let mut c = Canvas::default();
        unwatched.draw(&mut c).unwrap();
        assert!(lit(&c, 0, 54, 128, 64) > 128 * 10 / 2);

        let mut watched = Canvas::default();
        StatusScreen {
            driver: Some(DriverLine::default()),
            ..StatusScreen::default()
        }
        .draw(&mut watched)
        .unwrap();
        assert_eq!(lit(&watched, 0, 54, 128, 64), 0);

        // An alert's banner wins over the unwatched one.
        let mut with_alert = Canvas::default();
        let mut alert_only = Canvas::default();
        let alerts = vec!["absent".to_string()];
        StatusScreen {
            alerts: alerts.clone(),
            ..unwatched.clone()
        }
        .draw(&mut with_alert)
        .unwrap();
        StatusScreen {
            alerts,
            ..StatusScreen::default()
        }
        .draw(&mut alert_only)
        .unwrap();
        let banner = |c: &Canvas| -> Vec<bool> {
            (54..64)
                .flat_map(|y| (0..128).map(move |x| (x, y)))
                .map(|(x, y)| c.get(x, y))
                .collect()
        };
        assert_eq!(banner(&with_alert), banner(&alert_only));
    }

    #[test]
    fn driver_columns_follow_probability_and_odd_values_do_not_panic() {
        let mut p = [0.0; 7];
        p[Expression::Happy.index()] = 1.0;
        let s = StatusScreen {
            faces: 1,
            probs: Some(Probs(p)),
            driver: Some(DriverLine {
                eyes: EyeState::Closed,
                closed_for: Some(Duration::MAX),
                perclos: Some(f32::NAN),
                watching: true,
            }),
            ..StatusScreen::default()
        };
        let mut c = Canvas::default();
        s.draw(&mut c).unwrap();
        // The happy column (the fourth, from x = 1 + 3 × 18) is a full
        // 10 × 11 bar; the angry one is empty.
        assert_eq!(lit(&c, 1 + 54 + 4, 35, 1 + 54 + 14, 46), 110);
        assert_eq!(lit(&c, 1 + 4, 35, 1 + 14, 46), 0);
    }
}
