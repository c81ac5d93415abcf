//! The status page: one self-contained HTML document (no external assets, no script), rendered
//! on the server and refreshing itself every two seconds.

use std::fmt::Write;

use super::view::{GatewayView, SourceView};

fn esc(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub fn render(view: &GatewayView) -> String {
    let mut html = String::with_capacity(8192);
    html.push_str(r#"<!doctype html><html lang="en"><head><meta charset="utf-8"><meta http-equiv="refresh" content="2"><title>Strait status</title><style>
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}h1{font-size:1.3em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #ddd}
th{background:#f4f4f4}.usable{color:#0a7d2c}.open,.unhealthy{color:#c0392b;font-weight:bold}.half_open{color:#d68910;font-weight:bold}.drained{color:#777}
.badge{display:inline-block;padding:2px 8px;border-radius:10px;color:#fff}.ok{background:#0a7d2c}.bad{background:#c0392b}small{color:#666}
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
    for u in &view.upstreams {
        let _ = write!(
            html,
            "<h2 id=\"upstream-{name}\">{name} <small>{disc}{probed}</small></h2>",
            name = esc(&u.name),
            disc = u.discovery,
            probed = if u.probed { ", health-probed" } else { "" }
        );
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
    html.push_str("<p><small>Refreshes every 2 s · <a href=\"/upstreams\">/upstreams</a> · <a href=\"/metrics\">/metrics</a> · <a href=\"/readyz\">/readyz</a></small></p></body></html>");
    html
}
