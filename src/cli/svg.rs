//! A small SVG writer for the book's figures (`attnlab layout --svg`,
//! `attnlab trace --svg`): rectangles, lines and text, written in a fixed
//! order with fixed number formatting, so the same input always gives the
//! same bytes (docs/gen-figures.sh checks the committed figures against it).

use std::fmt::Write as _;

/// An SVG document being drawn; `finish` closes it.
pub struct Svg {
    width: f64,
    height: f64,
    style: String,
    body: String,
}

/// `"12.5"`, `"3"`: at most two decimals, no trailing zeros.
fn num(x: f64) -> String {
    let s = format!("{:.2}", x);
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" {
        "0".into()
    } else {
        s.into()
    }
}

/// XML text escaping.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Svg {
    pub fn new(width: f64, height: f64) -> Self {
        Svg {
            width,
            height,
            style: String::new(),
            body: String::new(),
        }
    }

    /// A CSS rule for the document's `<style>` (classes keep big grids small).
    pub fn add_style(&mut self, rule: &str) {
        self.style.push_str(rule);
        self.style.push('\n');
    }

    /// A rectangle styled by `class` (see [`Svg::add_style`]).
    pub fn cell(&mut self, x: f64, y: f64, w: f64, h: f64, class: &str) {
        let _ = writeln!(
            self.body,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" class=\"{class}\"/>",
            num(x),
            num(y),
            num(w),
            num(h)
        );
    }

    /// Text styled by `class`.
    pub fn label(&mut self, x: f64, y: f64, class: &str, s: &str) {
        let _ = writeln!(
            self.body,
            "<text x=\"{}\" y=\"{}\" class=\"{class}\">{}</text>",
            num(x),
            num(y),
            esc(s)
        );
    }

    /// A filled rectangle; `title` becomes its hover text.
    #[allow(clippy::too_many_arguments)]
    pub fn rect(
        &mut self,
        x: f64,
        y: f64,
        w: f64,
        h: f64,
        fill: &str,
        stroke: Option<&str>,
        title: Option<&str>,
    ) {
        let stroke = stroke.map_or(String::new(), |s| {
            format!(" stroke=\"{s}\" stroke-width=\"1\"")
        });
        let (open, close) = match title {
            Some(t) => (format!("><title>{}</title></rect>", esc(t)), String::new()),
            None => ("/>".to_string(), String::new()),
        };
        let _ = writeln!(
            self.body,
            "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{fill}\"{stroke}{open}{close}",
            num(x),
            num(y),
            num(w),
            num(h)
        );
    }

    pub fn line(&mut self, x1: f64, y1: f64, x2: f64, y2: f64, stroke: &str, width: f64) {
        let _ = writeln!(
            self.body,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{stroke}\" stroke-width=\"{}\"/>",
            num(x1),
            num(y1),
            num(x2),
            num(y2),
            num(width)
        );
    }

    /// Text at (x, y) (baseline); `anchor` is start, middle or end.
    pub fn text(&mut self, x: f64, y: f64, size: f64, anchor: &str, s: &str) {
        let _ = writeln!(
            self.body,
            "<text x=\"{}\" y=\"{}\" font-size=\"{}\" text-anchor=\"{anchor}\">{}</text>",
            num(x),
            num(y),
            num(size),
            esc(s)
        );
    }

    /// Grows the canvas to at least `h` tall.
    pub fn grow_to(&mut self, h: f64) {
        self.height = self.height.max(h);
    }

    pub fn finish(self) -> String {
        let style = if self.style.is_empty() {
            String::new()
        } else {
            format!("<style>\n{}</style>\n", self.style)
        };
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" font-family=\"sans-serif\">\n{style}<rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"white\"/>\n{}</svg>\n",
            self.body,
            w = num(self.width),
            h = num(self.height)
        )
    }
}

/// The colour of token `i` of `n`: hues spread by the golden angle so that
/// neighbouring tokens differ; `dark` for the highlighted token.
pub fn token_colour(i: usize, dark: bool) -> String {
    let hue = (i as f64 * 137.508) % 360.0;
    let light = if dark { 35 } else { 72 };
    format!("hsl({}, 70%, {light}%)", num(hue))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_have_at_most_two_decimals_and_no_trailing_zeros() {
        assert_eq!(num(3.0), "3");
        assert_eq!(num(12.5), "12.5");
        assert_eq!(num(1.0 / 3.0), "0.33");
        assert_eq!(num(-0.001), "0");
    }

    #[test]
    fn text_is_escaped() {
        let mut s = Svg::new(10.0, 10.0);
        s.text(0.0, 0.0, 10.0, "start", "a<b & \"c\"");
        assert!(s.finish().contains("a&lt;b &amp; &quot;c&quot;"));
    }

    #[test]
    fn same_drawing_gives_same_bytes() {
        let draw = || {
            let mut s = Svg::new(100.0, 50.0);
            s.rect(
                1.0,
                2.0,
                3.0,
                4.0,
                &token_colour(5, false),
                Some("black"),
                Some("t5"),
            );
            s.line(0.0, 0.0, 10.0, 10.0, "gray", 0.5);
            s.finish()
        };
        assert_eq!(draw(), draw());
    }
}
