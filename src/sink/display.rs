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

use std::fmt::Write as _;

use embedded_graphics::mono_font::ascii::{FONT_4X6, FONT_6X10};
use embedded_graphics::mono_font::MonoTextStyle;
use embedded_graphics::pixelcolor::BinaryColor;
use embedded_graphics::prelude::*;
use embedded_graphics::primitives::{PrimitiveStyle, Rectangle};
use embedded_graphics::text::{Alignment, Baseline, Text, TextStyleBuilder};

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

        // Seven rows of 6 px from y = 11: a 3-letter label in 4×6, a bar of
        // 4 px, the percentage right-aligned.
        const BAR_X: i32 = 14;
        const BAR_MAX: u32 = 98;
        if let Some(p) = self.probs {
            for (i, e) in Expression::ALL.into_iter().enumerate() {
                let y = 11 + 6 * i as i32;
                Text::with_text_style(&e.name()[..3], Point::new(0, y - 1), small, top_left)
                    .draw(d)?;
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
        }

        // Alerts are cleared while degraded, so the two banners never
        // compete; an unavailable system must not look like a calm one.
        if self.degraded || !self.alerts.is_empty() {
            Rectangle::new(Point::new(0, 54), Size::new(128, 10))
                .into_styled(PrimitiveStyle::with_fill(BinaryColor::On))
                .draw(d)?;
            s.clear();
            if self.degraded {
                s.push_str("? NOT WATCHING");
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
        };
        let mut c = Canvas::default();
        s.draw(&mut c).unwrap();
        let happy_row = 11 + 6 * 3 + 2;
        let angry_row = 11 + 2;
        assert_eq!(lit(&c, 14, happy_row, 14 + 98, happy_row + 1), 98);
        assert_eq!(lit(&c, 14, angry_row, 14 + 98, angry_row + 1), 0);
    }
}
