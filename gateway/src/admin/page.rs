//! The status page: one self-contained HTML document (no external assets, no script), rendered
//! on the server and refreshing itself every two seconds. Listeners, every route and upstream
//! with its last minute of traffic (figures and an inline SVG chart), and the endpoint tables.

use std::fmt::Write;

use super::view::{GatewayView, SourceView};
use crate::metrics::traffic::TrafficSummary;

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn millis(value: Option<f64>) -> String {
    match value {
        None => "-".into(),
        Some(ms) if ms < 10.0 => format!("{ms:.2} ms"),
        Some(ms) => format!("{ms:.0} ms"),
    }
}

/// The figure cells of a traffic row: calls per second, share not OK, p50, p99.
fn figures(t: &TrafficSummary) -> String {
    format!(
        "<td class=\"num rate\">{:.1}</td><td class=\"num{}\">{:.1}%</td><td class=\"num\">{}</td><td class=\"num\">{}</td>",
        t.calls_per_second,
        if t.errors > 0 { " open" } else { "" },
        t.error_share * 100.0,
        millis(t.p50_ms),
        millis(t.p99_ms),
    )
}

/// 60 bars, one per second, oldest on the left; the part of each bar that was not OK in red.
fn chart(t: &TrafficSummary) -> String {
    const WIDTH: usize = 3;
    const HEIGHT: f64 = 28.0;
    let peak = t.per_second.iter().copied().max().unwrap_or(0).max(1) as f64;
    let mut svg = format!(
        "<svg class=\"chart\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" role=\"img\" aria-label=\"calls per second over the last minute, peak {peak}\">",
        w = WIDTH * t.per_second.len(),
        h = HEIGHT as u32,
        peak = peak as u64,
    );
    for (i, (calls, errors)) in t.per_second.iter().zip(&t.errors_per_second).enumerate() {
        if *calls == 0 {
            continue;
        }
        let height = (*calls as f64 / peak * HEIGHT).max(1.0);
        let bad = *errors as f64 / peak * HEIGHT;
        let _ = write!(
            svg,
            "<rect class=\"calls\" x=\"{x}\" y=\"{y:.1}\" width=\"{bw}\" height=\"{height:.1}\"/>",
            x = i * WIDTH,
            y = HEIGHT - height,
            bw = WIDTH - 1,
        );
        if *errors > 0 {
            let _ = write!(
                svg,
                "<rect class=\"errors\" x=\"{x}\" y=\"{y:.1}\" width=\"{bw}\" height=\"{bad:.1}\"/>",
                x = i * WIDTH,
                y = HEIGHT - bad,
                bw = WIDTH - 1,
            );
        }
    }
    svg.push_str("</svg>");
    svg
}

pub fn render(view: &GatewayView) -> String {
    let mut html = String::with_capacity(8192);
    html.push_str(r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="2"><title>Strait status</title><style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #ddd}
th{background:#f4f4f4}.usable{color:#0a7d2c}.open,.unhealthy{color:#c0392b;font-weight:bold}.half_open{color:#d68910;font-weight:bold}.drained{color:#777}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;color:#fff}.ok{background:#0a7d2c}.bad{background:#c0392b}small{color:#666}
td.num{text-align:right;font-variant-numeric:tabular-nums}svg.chart{vertical-align:middle}.calls{fill:#2e86c1}.errors{fill:#c0392b}
</style></head><body>"#);
    let _ = write!(
        html,
        "<h1>Strait <span class=\"badge {}\">{}</span></h1>",
        if view.ready { "ok" } else { "bad" },
        if view.ready {
            "ready".to_string()
        } else {
            esc(view.not_ready_reason.as_deref().unwrap_or("not ready"))
        }
    );
    if let Some(d) = &view.discovery {
        let _ = write!(
            html,
            "<p>etcd: {} · synced: {} · staleness: {}{}</p>",
            if d.connected {
                "connected"
            } else {
                "<b class=\"open\">disconnected</b>"
            },
            if d.synced { "yes" } else { "not yet" },
            d.staleness_seconds
                .map(|s| format!("{s:.1} s"))
                .unwrap_or_else(|| "-".into()),
            d.last_error
                .as_deref()
                .map(|e| format!(" · last error: {}", esc(e)))
                .unwrap_or_default()
        );
    }
    if !view.listeners.is_empty() {
        html.push_str("<h2>Listeners</h2><table><tr><th>listener</th><th>protocol</th><th>open connections</th><th>rejected since start</th></tr>");
        for l in &view.listeners {
            let rejected: Vec<String> = l
                .rejected
                .iter()
                .filter(|(_, n)| **n > 0)
                .map(|(reason, n)| format!("{n} {reason}"))
                .collect();
            let _ = write!(
                html,
                "<tr class=\"listener\" data-listener=\"{name}\" data-open=\"{open}\"><td>{name}</td><td>{protocol}</td><td class=\"num\">{open}</td><td>{rejected}</td></tr>",
                name = esc(&l.name),
                protocol = l.protocol,
                open = l.open_connections,
                rejected = if rejected.is_empty() { "none".to_string() } else { rejected.join(", ") },
            );
        }
        html.push_str("</table>");
    }
    if !view.routes.is_empty() {
        html.push_str("<h2>Routes, last minute</h2><table><tr><th>listener</th><th>route</th><th>upstream</th><th>calls/s</th><th>not OK</th><th>p50</th><th>p99</th><th>calls per second, 60 s</th></tr>");
        for r in &view.routes {
            let _ = write!(
                html,
                "<tr class=\"route\" data-listener=\"{listener}\" data-route=\"{route}\" data-calls=\"{calls}\" data-errors=\"{errors}\"><td>{listener}</td><td>{route}</td><td>{upstream}</td>{figures}<td>{chart}</td></tr>",
                listener = esc(&r.listener),
                route = esc(&r.route),
                upstream = esc(&r.upstream),
                calls = r.traffic.calls,
                errors = r.traffic.errors,
                figures = figures(&r.traffic),
                chart = chart(&r.traffic),
            );
        }
        html.push_str("</table>");
    }
    for u in &view.upstreams {
        let _ = write!(
            html,
            "<h2 id=\"upstream-{name}\">{name} <small>{disc}{probed}</small></h2>",
            name = esc(&u.name),
            disc = u.discovery,
            probed = if u.probed { ", health-probed" } else { "" }
        );
        if let Some(t) = &u.traffic {
            let _ = write!(
                html,
                "<table class=\"traffic\"><tr><th>calls/s</th><th>not OK</th><th>p50</th><th>p99</th><th>last minute</th></tr><tr class=\"upstream-traffic\" data-upstream=\"{name}\" data-calls=\"{calls}\" data-errors=\"{errors}\">{figures}<td>{chart}</td></tr></table>",
                name = esc(&u.name),
                calls = t.calls,
                errors = t.errors,
                figures = figures(t),
                chart = chart(t),
            );
        }
        for n in u.dns.iter().flatten() {
            let _ = write!(
                html,
                "<p class=\"dns-name\">dns {name}:{port} · <span class=\"{class}\">{state}</span> · {addresses} address(es){ttl}{stale}{error}</p>",
                name = esc(&n.name),
                port = n.port,
                class = if n.state == "resolved" { "usable" } else { "open" },
                state = n.state,
                addresses = n.addresses,
                ttl = n.ttl_seconds.map(|t| format!(" · TTL {t} s")).unwrap_or_default(),
                stale = n
                    .staleness_seconds
                    .filter(|s| *s > 0.0)
                    .map(|s| format!(" · stale {s:.1} s"))
                    .unwrap_or_default(),
                error = n
                    .last_error
                    .as_deref()
                    .map(|e| format!(" · last error: {}", esc(e)))
                    .unwrap_or_default(),
            );
        }
        if u.endpoints.is_empty() {
            let _ = write!(
                html,
                "<p class=\"open\">no endpoints: {}</p>",
                esc(u.empty_reason.as_deref().unwrap_or("none"))
            );
            continue;
        }
        html.push_str("<table><tr><th>endpoint</th><th>state</th><th>region</th><th>weight</th><th>version</th><th>health</th><th>breaker</th><th>last transition</th><th>in flight</th><th>source</th></tr>");
        for e in &u.endpoints {
            let state = e.summary_state();
            let transition = e
                .last_transition
                .as_ref()
                .map(|t| {
                    format!(
                        "{} → {} ({}){}",
                        t.from,
                        t.to,
                        t.reason,
                        t.open_ms
                            .map(|ms| format!(", open {ms} ms"))
                            .unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| "-".into());
            let source = match &e.source {
                SourceView::Static => "static".to_string(),
                SourceView::Etcd { key, revision } => format!("etcd {} @{}", esc(key), revision),
                SourceView::Dns { name } => format!("dns {}", esc(name)),
            };
            let _ = write!(
                html,
                "<tr class=\"endpoint\" data-addr=\"{addr}\"><td>{addr}</td><td class=\"{state}\">{state}</td><td>{region}</td><td>{weight}</td><td>{version}</td><td>{health}</td><td class=\"{breaker}\">{breaker}</td><td>{transition}</td><td>{in_flight}</td><td>{source}</td></tr>",
                addr = esc(&e.addr),
                region = esc(e.region.as_deref().unwrap_or("-")),
                weight = e.weight,
                version = esc(e.version.as_deref().unwrap_or("-")),
                health = e.health,
                breaker = e.breaker_state.as_str(),
                transition = esc(&transition),
                in_flight = e.in_flight,
            );
        }
        html.push_str("</table>");
    }
    if let Some(clients) = &view.xds_clients {
        let _ = write!(
            html,
            "<h2>xDS clients</h2><p class=\"xds-count\" data-clients=\"{n}\">{n} connected</p>",
            n = clients.len()
        );
        if !clients.is_empty() {
            html.push_str("<table><tr><th>node id</th><th>region</th><th>peer</th><th>accepted versions</th><th>NACKs</th></tr>");
            for c in clients {
                let acked: Vec<String> = c.acked.iter().map(|(t, v)| format!("{t} {v}")).collect();
                let nacks = match &c.last_nack {
                    Some(last) => format!("{} (last: {})", c.nacks, esc(last)),
                    None => c.nacks.to_string(),
                };
                let _ = write!(
                    html,
                    "<tr class=\"xds-client\" data-node=\"{node}\"><td>{node}</td><td>{region}</td><td>{peer}</td><td>{acked}</td><td>{nacks}</td></tr>",
                    node = esc(&c.node_id),
                    region = esc(c.region.as_deref().unwrap_or("-")),
                    peer = esc(c.peer.as_deref().unwrap_or("-")),
                    acked = esc(&acked.join(", ")),
                );
            }
            html.push_str("</table>");
        }
    }
    html.push_str("<p><small>Refreshes every 2 s · <a href=\"/upstreams\">/upstreams</a> · <a href=\"/metrics\">/metrics</a> · <a href=\"/readyz\">/readyz</a></small></p></body></html>");
    html
}
