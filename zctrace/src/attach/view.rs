//! The live view: a terminal UI (ratatui) on a terminal, plain lines anywhere else.
use std::{
    io::IsTerminal as _,
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::Result;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    widgets::{Block, Paragraph, Row, Table},
    DefaultTerminal,
};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Ctrl-C ends tracing with a report instead of killing zctrace.
pub(crate) fn catch_interrupts() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(on_interrupt),
        SaFlags::empty(),
        SigSet::empty(),
    );
    for signal in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// One screenful: a title, a summary line, a table.
pub struct Frame {
    pub title: String,
    pub summary: String,
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
    pub widths: Vec<u16>,
    /// Lines under the table (with `--stacks`: the top call sites).
    pub footer: Vec<String>,
}

/// How soon a wait notices a stop request.
const RESPONSIVENESS: Duration = Duration::from_millis(100);

pub enum View {
    Terminal(DefaultTerminal),
    Plain,
}

impl View {
    pub fn open(plain: bool) -> View {
        if plain || !std::io::stdout().is_terminal() {
            View::Plain
        } else {
            View::Terminal(ratatui::init())
        }
    }

    /// Shows a frame, then waits up to `wait` for q or Ctrl-C on a terminal, or for SIGINT or
    /// SIGTERM anywhere (true: asked to stop), noticing either within 100 ms.
    pub fn show(&mut self, frame: &Frame, wait: Duration, done: impl Fn() -> bool) -> Result<bool> {
        let until = Instant::now() + wait;
        self.draw(frame)?;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            if interrupted() || self.key_pressed(left.min(RESPONSIVENESS))? {
                return Ok(true);
            }
            // A traced process that ends mid-interval ends the trace then, not at the interval.
            if done() {
                break;
            }
        }
        Ok(interrupted())
    }

    fn draw(&mut self, frame: &Frame) -> Result<()> {
        match self {
            View::Plain => {
                // As `top -b` does: every frame whole, its rows in aligned columns.
                let line = |cells: &[String]| {
                    let padded: Vec<String> = cells
                        .iter()
                        .zip(&frame.widths)
                        .map(|(cell, width)| format!("{cell:<width$}", width = *width as usize))
                        .collect();
                    padded.join(" ").trim_end().to_string()
                };
                println!("{} | {}", frame.title, frame.summary);
                let header: Vec<String> = frame.header.iter().map(|h| h.to_string()).collect();
                println!("{}", line(&header));
                frame.rows.iter().for_each(|row| println!("{}", line(row)));
                frame.footer.iter().for_each(|l| println!("{l}"));
            }
            View::Terminal(terminal) => {
                terminal.draw(|f| draw(f, frame))?;
            }
        }
        Ok(())
    }

    /// Waits up to `wait` for q or Ctrl-C on a terminal; elsewhere just waits.
    fn key_pressed(&mut self, wait: Duration) -> Result<bool> {
        if let View::Plain = self {
            std::thread::sleep(wait);
            return Ok(false);
        }
        if event::poll(wait)? {
            if let Event::Key(key) = event::read()? {
                let ctrl_c = key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                return Ok(ctrl_c || key.code == KeyCode::Char('q'));
            }
        }
        Ok(false)
    }

    pub fn close(self) {
        if let View::Terminal(_) = self {
            ratatui::restore();
        }
    }
}

fn draw(f: &mut ratatui::Frame, frame: &Frame) {
    let footer_height = if frame.footer.is_empty() {
        0
    } else {
        frame.footer.len() as u16 + 2
    };
    let [top, table, footer] = Layout::vertical([
        Constraint::Length(3),
        Constraint::Min(3),
        Constraint::Length(footer_height),
    ])
    .areas(f.area());
    if !frame.footer.is_empty() {
        f.render_widget(
            Paragraph::new(frame.footer.join("\n")).block(Block::bordered().title("top call sites")),
            footer,
        );
    }
    f.render_widget(
        Paragraph::new(frame.summary.as_str()).block(Block::bordered().title(frame.title.as_str())),
        top,
    );
    let header = Row::new(frame.header.clone()).style(Style::new().add_modifier(Modifier::BOLD));
    let rows = frame.rows.iter().map(|r| Row::new(r.clone()));
    let widths = frame.widths.iter().map(|w| Constraint::Length(*w));
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title("q or Ctrl-C to stop")),
        table,
    );
}

pub fn mb(bytes: f64) -> String {
    format!("{:.1}", bytes / 1e6)
}
