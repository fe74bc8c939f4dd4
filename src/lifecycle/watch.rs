//! `cc-relay status --watch`: the status table redrawn live in the terminal (ratatui): the
//! traffic of the last ten minutes, each provider's circuit, each key's budget as bars, the
//! recent errors. It polls `/status` every interval and keeps the last good picture (saying
//! why) while the relay does not answer. `q`, Esc or Ctrl-C quits.

use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Cell, Paragraph, Row, Sparkline, Table};
use ratatui::{DefaultTerminal, Frame};
use serde_json::Value;

use super::status::StatusTarget;
use super::LifecycleError;

/// Cells of a budget bar.
const BAR_CELLS: usize = 12;

/// What one frame shows.
pub struct View<'a> {
    pub url: &'a str,
    /// The last status the relay gave, if any.
    pub status: Option<&'a Value>,
    /// Why the last poll failed, if it did.
    pub error: Option<&'a str>,
}

/// Run the live view until the user quits (polling at most every 100 ms).
pub fn watch(target: &StatusTarget, interval: Duration) -> Result<(), LifecycleError> {
    let interval = interval.max(Duration::from_millis(100));
    let mut terminal = ratatui::try_init().map_err(|e| LifecycleError::Status(e.to_string()))?;
    let result = run(&mut terminal, target, interval);
    ratatui::restore();
    result.map_err(|e| LifecycleError::Status(e.to_string()))
}

fn run(
    terminal: &mut DefaultTerminal,
    target: &StatusTarget,
    interval: Duration,
) -> std::io::Result<()> {
    let mut last: Option<Value> = None;
    loop {
        let error = match target.fetch() {
            Ok(status) => {
                last = Some(status);
                None
            }
            Err(e) => Some(e.to_string()),
        };
        let view = View {
            url: &target.url,
            status: last.as_ref(),
            error: error.as_deref(),
        };
        terminal.draw(|frame| draw(frame, &view))?;
        let next_poll = Instant::now() + interval;
        while let Some(left) = next_poll.checked_duration_since(Instant::now()) {
            if !event::poll(left)? {
                break;
            }
            match event::read()? {
                Event::Key(key) if key.kind == KeyEventKind::Press => {
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
                Event::Resize(..) => {
                    terminal.draw(|frame| draw(frame, &view))?;
                }
                _ => {}
            }
        }
    }
}

/// Draw `view` on the whole frame.
pub fn draw(frame: &mut Frame, view: &View) {
    let [header, traffic, providers, errors, footer] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Length(5),
        Constraint::Min(6),
        Constraint::Length(8),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    frame.render_widget(header_lines(view), header);
    let Some(status) = view.status else {
        return;
    };
    let slots = status["activity"]["slots"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let requests: Vec<u64> = slots
        .iter()
        .map(|s| s["requests"].as_u64().unwrap_or(0))
        .collect();
    // The last minute: the six whole slots before the current one.
    let minute = &slots[slots.len().saturating_sub(7)..slots.len().saturating_sub(1)];
    let sum = |field: &str| -> u64 { minute.iter().map(|s| s[field].as_u64().unwrap_or(0)).sum() };
    let title = format!(
        " traffic, last 10 min: {:.2} req/s, {:.2} errors/s over the last minute ",
        sum("requests") as f64 / 60.0,
        sum("errors") as f64 / 60.0
    );
    let sparkline = Sparkline::default()
        .block(Block::default().borders(Borders::ALL).title(title))
        .data(&requests)
        .style(Style::default().fg(Color::Blue));
    frame.render_widget(sparkline, traffic);
    frame.render_widget(providers_table(status), providers);
    frame.render_widget(errors_table(status), errors);
    frame.render_widget(
        Paragraph::new("q quits · bars: what is left of each limit per minute".dim()),
        footer,
    );
}

fn header_lines<'a>(view: &View<'a>) -> Paragraph<'a> {
    let mut first = vec![
        Span::from("cc-relay ").bold(),
        Span::from(view.url.to_owned()),
    ];
    let mut second = Vec::new();
    if let Some(s) = view.status {
        first.push(Span::from(format!(
            "  v{}  config generation {}  routing {}",
            s["version"].as_str().unwrap_or("?"),
            s["config_generation"],
            s["routing"]["strategy"].as_str().unwrap_or("-")
        )));
        if let Some(e) = s["reload"]["last_error"].as_str() {
            second.push(Span::from(format!("last reload failed: {e}  ")).red());
        }
    }
    match view.error {
        Some(e) => second.push(Span::from(format!("not updating: {e}")).red()),
        None => second.push(Span::from("live").green()),
    }
    Paragraph::new(vec![Line::from(first), Line::from(second)])
}

/// A budget bar for `remaining` of `limit`, coloured by how much is left.
fn bar(remaining: u64, limit: u64) -> Line<'static> {
    if limit == 0 {
        return Line::from("limit unknown".dim());
    }
    let share = remaining.min(limit) as f64 / limit as f64;
    let filled = (share * BAR_CELLS as f64).round() as usize;
    let color = if remaining == 0 {
        Color::Red
    } else if share < 0.2 {
        Color::Yellow
    } else {
        Color::Green
    };
    Line::from(vec![
        Span::styled("█".repeat(filled), Style::default().fg(color)),
        Span::styled(
            "░".repeat(BAR_CELLS - filled),
            Style::default().fg(Color::DarkGray),
        ),
        Span::from(format!(" {}/{}", compact(remaining), compact(limit))),
    ])
}

fn compact(n: u64) -> String {
    match n {
        n if n >= 10_000_000 => format!("{}M", n / 1_000_000),
        n if n >= 1_000_000 => format!("{:.1}M", n as f64 / 1e6),
        n if n >= 10_000 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

fn circuit_style(circuit: &str) -> Style {
    match circuit {
        "closed" => Style::default().fg(Color::Green),
        "half_open" => Style::default().fg(Color::Yellow),
        _ => Style::default().fg(Color::Red),
    }
}

fn providers_table(status: &Value) -> Table<'static> {
    let mut rows = Vec::new();
    for p in status["providers"].as_array().into_iter().flatten() {
        let circuit = p["circuit"].as_str().unwrap_or("-").to_owned();
        let keys = p["keys"].as_array().cloned().unwrap_or_default();
        let summary = if keys.is_empty() {
            "passthrough".to_owned()
        } else {
            format!("{}/{} keys available", p["keys_available"], keys.len())
        };
        rows.push(
            Row::new(vec![
                Cell::from(p["name"].as_str().unwrap_or("-").to_owned()).bold(),
                Cell::from(format!("circuit {circuit}")).style(circuit_style(&circuit)),
                Cell::from(p["type"].as_str().unwrap_or("-").to_owned()),
                Cell::from(summary),
                Cell::from(""),
                Cell::from(""),
                Cell::from(format!("{}", p["in_flight"])),
            ])
            .style(Style::default().add_modifier(Modifier::UNDERLINED)),
        );
        for k in keys {
            let (state, style) = match (k["disabled"].as_bool(), k["cooling_down_ms"].as_u64()) {
                (Some(true), _) => ("disabled".to_owned(), Style::default().fg(Color::Red)),
                (_, Some(ms)) => (
                    format!("cooling {:.1}s", ms as f64 / 1000.0),
                    Style::default().fg(Color::Yellow),
                ),
                _ => ("available".to_owned(), Style::default().fg(Color::Green)),
            };
            let dim = |d: &str| {
                bar(
                    k[d]["remaining"].as_u64().unwrap_or(0),
                    k[d]["limit"].as_u64().unwrap_or(0),
                )
            };
            rows.push(Row::new(vec![
                Cell::from(format!("  {}", k["id"].as_str().unwrap_or("-"))),
                Cell::from(state).style(style),
                Cell::from(dim("requests")),
                Cell::from(dim("input_tokens")),
                Cell::from(dim("output_tokens")),
                Cell::from(""),
                Cell::from(format!("{}", k["in_flight"])),
            ]));
        }
    }
    let widths = [
        Constraint::Length(18),
        Constraint::Length(16),
        Constraint::Length(24),
        Constraint::Length(26),
        Constraint::Length(26),
        Constraint::Length(1),
        Constraint::Length(9),
    ];
    Table::new(rows, widths)
        .header(
            Row::new([
                "key",
                "state",
                "requests/min",
                "input tokens/min",
                "output tokens/min",
                "",
                "in flight",
            ])
            .style(Style::default().add_modifier(Modifier::DIM)),
        )
        .block(Block::default().borders(Borders::ALL).title(" providers "))
}

/// `HH:MM:SS` (UTC) of a Unix time in milliseconds.
fn clock(at_ms: u64) -> String {
    let secs = at_ms / 1000 % 86_400;
    format!("{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60)
}

fn errors_table(status: &Value) -> Table<'static> {
    let rows = status["recent_errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            let status = match e["status"].as_u64() {
                Some(0) | None => "none".to_owned(),
                Some(s) => s.to_string(),
            };
            Row::new(vec![
                Cell::from(clock(e["at_ms"].as_u64().unwrap_or(0))),
                Cell::from(e["request_id"].as_str().unwrap_or("-").to_owned()),
                Cell::from(status).red(),
                Cell::from(format!(
                    "{} {}",
                    e["method"].as_str().unwrap_or(""),
                    e["path"].as_str().unwrap_or("")
                )),
                Cell::from(format!(
                    "{}/{}",
                    e["provider"].as_str().unwrap_or("-"),
                    e["key"].as_str().unwrap_or("-")
                )),
            ])
        });
    let widths = [
        Constraint::Length(9),
        Constraint::Length(34),
        Constraint::Length(6),
        Constraint::Min(20),
        Constraint::Length(28),
    ];
    Table::new(rows, widths).block(
        Block::default()
            .borders(Borders::ALL)
            .title(" recent errors (UTC) "),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn screen(view: &View) -> String {
        let mut terminal = Terminal::new(TestBackend::new(140, 36)).unwrap();
        terminal.draw(|f| draw(f, view)).unwrap();
        let buffer = terminal.backend().buffer();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            for x in 0..buffer.area.width {
                text.push_str(buffer[(x, y)].symbol());
            }
            text.push('\n');
        }
        text
    }

    #[test]
    fn the_frame_shows_circuits_keys_with_bars_and_errors() {
        let status = serde_json::json!({
            "version": "0.1.0", "config_generation": 3, "routing": {"strategy": "failover"},
            "reload": {"last_error": null},
            "providers": [{
                "name": "anthropic", "type": "anthropic", "circuit": "open", "in_flight": 2,
                "keys_available": 1,
                "keys": [
                    {"id": "team-a", "disabled": false, "cooling_down_ms": null, "in_flight": 2,
                     "requests": {"limit": 50, "remaining": 25},
                     "input_tokens": {"limit": 40000, "remaining": 0},
                     "output_tokens": {"limit": 0, "remaining": 0}},
                    {"id": "team-b", "disabled": false, "cooling_down_ms": 4200, "in_flight": 0,
                     "requests": {"limit": 50, "remaining": 50},
                     "input_tokens": {"limit": 40000, "remaining": 40000},
                     "output_tokens": {"limit": 8000, "remaining": 8000}}
                ]
            }],
            "activity": {"slot_seconds": 10, "slots": [{"start": 0, "requests": 60, "errors": 6}]},
            "recent_errors": [{"at_ms": 3_723_000, "request_id": "req_relay_abc", "status": 429,
                "method": "POST", "path": "/v1/messages", "provider": "anthropic",
                "key": "team-a", "attempts": 1}]
        });
        let text = screen(&View {
            url: "http://127.0.0.1:8787",
            status: Some(&status),
            error: None,
        });
        assert!(text.contains("circuit open"), "{text}");
        assert!(text.contains("team-a") && text.contains("team-b"), "{text}");
        assert!(text.contains("██████░░░░░░ 25/50"), "{text}");
        assert!(text.contains("░░░░░░░░░░░░ 0/40k"), "{text}");
        assert!(text.contains("limit unknown"), "{text}");
        assert!(text.contains("cooling 4.2s"), "{text}");
        assert!(
            text.contains("01:02:03") && text.contains("req_relay_abc"),
            "{text}"
        );
        assert!(text.contains("live"), "{text}");
    }

    #[test]
    fn a_failed_poll_says_why_and_keeps_nothing_stale_unmarked() {
        let text = screen(&View {
            url: "http://127.0.0.1:1",
            status: None,
            error: Some("connection refused"),
        });
        assert!(text.contains("not updating: connection refused"), "{text}");
    }
}
