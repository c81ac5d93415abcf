//! Per-method call metrics: `strait_calls_total` and `strait_call_duration_seconds` by gRPC service
//! and method, and `strait_messages_total` for streams. A method's handles are created at the
//! end of its first call that shows the method is real (a backend answered it with something
//! other than UNIMPLEMENTED, or the config names it) and kept in a copy-on-write table per
//! route, so later calls only look a path up in an immutable map and increment atomics. The
//! series are bounded: at most `max_methods` distinct service/method pairs per listener; calls
//! of any further pair, and of methods nothing vouched for yet, are counted under
//! `service="other", method="other"`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use arc_swap::ArcSwap;
use prometheus::{Histogram, HistogramVec, IntCounter, IntCounterVec};

use crate::grpc::{Code, Protocol};

/// The label value of the pairs beyond the bound.
pub const OTHER: &str = "other";

/// The metric families and the per-listener bound, shared by every route's table.
#[derive(Debug)]
pub struct MethodFamilies {
    pub(super) calls: IntCounterVec,
    pub(super) duration: HistogramVec,
    pub(super) messages: IntCounterVec,
    pub(super) max_methods: usize,
    /// Per listener: the service/method pairs that have their own series.
    pub(super) seen: Mutex<HashMap<String, HashSet<String>>>,
}

impl MethodFamilies {
    /// Whether `pair` may have its own series on `listener` (it has one, or the bound allows
    /// one more).
    fn admit(&self, listener: &str, pair: &str) -> bool {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let pairs = seen.entry(listener.to_string()).or_default();
        if pairs.contains(pair) {
            return true;
        }
        if pairs.len() >= self.max_methods {
            return false;
        }
        pairs.insert(pair.to_string());
        true
    }
}

/// One method's handles on one route.
#[derive(Debug)]
pub struct MethodMetrics {
    /// Native gRPC calls, by code.
    calls: [IntCounter; 17],
    /// gRPC-Web and JSON calls, by code: made on the first such call, so a listener without
    /// browsers or REST callers exports no series for them.
    web_calls: [OnceLock<[IntCounter; 17]>; 2],
    family: IntCounterVec,
    /// listener, route, upstream, service, method.
    labels: [String; 5],
    duration: Histogram,
    request_messages: IntCounter,
    response_messages: IntCounter,
}

impl MethodMetrics {
    pub fn call_finished(
        &self,
        code: Code,
        protocol: Protocol,
        seconds: f64,
        request_msgs: u64,
        response_msgs: u64,
    ) {
        let calls = match protocol {
            Protocol::Grpc => &self.calls,
            Protocol::GrpcWeb => self.web_calls[0].get_or_init(|| self.by_code(protocol)),
            Protocol::Json => self.web_calls[1].get_or_init(|| self.by_code(protocol)),
        };
        calls[code as usize].inc();
        self.duration.observe(seconds);
        if request_msgs > 0 {
            self.request_messages.inc_by(request_msgs);
        }
        if response_msgs > 0 {
            self.response_messages.inc_by(response_msgs);
        }
    }

    fn by_code(&self, protocol: Protocol) -> [IntCounter; 17] {
        calls_by_code(&self.family, &self.labels, protocol)
    }
}

fn calls_by_code(
    family: &IntCounterVec,
    labels: &[String; 5],
    protocol: Protocol,
) -> [IntCounter; 17] {
    let [l, r, u, s, m] = labels.each_ref().map(String::as_str);
    Code::ALL.map(|c| family.with_label_values(&[l, r, u, s, m, c.as_str(), protocol.as_str()]))
}

/// The methods seen on one route (listener, route, upstream).
#[derive(Debug)]
pub struct RouteMethods {
    listener: String,
    route: String,
    upstream: String,
    families: Arc<MethodFamilies>,
    /// `:path` to its handles. Replaced whole when a method is added (a bounded number of
    /// times), read without a lock by every call.
    table: ArcSwap<HashMap<Box<str>, Arc<MethodMetrics>>>,
    /// Serialises additions, so two first calls of one method create it once.
    grow: Mutex<()>,
}

impl RouteMethods {
    pub(super) fn new(
        families: Arc<MethodFamilies>,
        listener: &str,
        route: &str,
        upstream: &str,
    ) -> Self {
        Self {
            listener: listener.to_string(),
            route: route.to_string(),
            upstream: upstream.to_string(),
            families,
            table: ArcSwap::from_pointee(HashMap::new()),
            grow: Mutex::new(()),
        }
    }

    fn handles(&self, service: &str, method: &str) -> MethodMetrics {
        let f = &self.families;
        let (l, r, u) = (
            self.listener.as_str(),
            self.route.as_str(),
            self.upstream.as_str(),
        );
        let labels = [l, r, u, service, method].map(str::to_string);
        MethodMetrics {
            calls: calls_by_code(&f.calls, &labels, Protocol::Grpc),
            web_calls: Default::default(),
            family: f.calls.clone(),
            labels,
            duration: f.duration.with_label_values(&[u, service, method]),
            request_messages: f
                .messages
                .with_label_values(&[u, service, method, "request"]),
            response_messages: f
                .messages
                .with_label_values(&[u, service, method, "response"]),
        }
    }

    /// The handles of a method that has its own series (`:path` `path`), looked up without a
    /// lock.
    pub fn known(&self, path: &str) -> Option<Arc<MethodMetrics>> {
        self.table.load().get(path).cloned()
    }

    /// The handles for a finished call of `service`/`method` (its `:path` is `path`) whose
    /// method was not `known` when it began. It gets series of its own only when the call
    /// `vouched` for it (a backend answered it, or the config names it) and the listener's
    /// `max_methods` allows one more; otherwise it counts as `other`.
    pub fn for_finished_call(
        &self,
        path: &str,
        service: &str,
        method: &str,
        vouched: bool,
    ) -> Arc<MethodMetrics> {
        if let Some(found) = self.known(path) {
            return found;
        }
        if !vouched {
            if let Some(other) = self.known(OTHER) {
                return other;
            }
        }
        let _serial = self.grow.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(found) = self.table.load().get(path) {
            return found.clone();
        }
        let pair = format!("{service}/{method}");
        let (key, handles) = if vouched && self.families.admit(&self.listener, &pair) {
            (path, self.handles(service, method))
        } else {
            // Not cached under its own path: a flood of distinct paths must not grow the
            // table. Each such call takes this (short) lock.
            if let Some(other) = self.table.load().get(OTHER) {
                return other.clone();
            }
            (OTHER, self.handles(OTHER, OTHER))
        };
        let handles = Arc::new(handles);
        let mut next = HashMap::clone(&self.table.load());
        next.insert(key.into(), handles.clone());
        self.table.store(Arc::new(next));
        handles
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::{HistogramOpts, Opts};

    fn families(max_methods: usize) -> Arc<MethodFamilies> {
        Arc::new(MethodFamilies {
            calls: IntCounterVec::new(
                Opts::new("c", "c"),
                &[
                    "listener", "route", "upstream", "service", "method", "code", "protocol",
                ],
            )
            .unwrap(),
            duration: HistogramVec::new(
                HistogramOpts::new("d", "d"),
                &["upstream", "service", "method"],
            )
            .unwrap(),
            messages: IntCounterVec::new(
                Opts::new("m", "m"),
                &["upstream", "service", "method", "direction"],
            )
            .unwrap(),
            max_methods,
            seen: Default::default(),
        })
    }

    #[test]
    fn a_method_gets_its_handles_once_and_counts() {
        let f = families(10);
        let route = RouteMethods::new(f.clone(), "l", "a.A", "up");
        let first = route.for_finished_call("/a.A/M", "a.A", "M", true);
        let again = route.for_finished_call("/a.A/M", "a.A", "M", true);
        assert!(Arc::ptr_eq(&first, &again));
        first.call_finished(Code::Ok, Protocol::Grpc, 0.01, 3, 2);
        again.call_finished(Code::NotFound, Protocol::Grpc, 0.02, 1, 0);
        again.call_finished(Code::NotFound, Protocol::Json, 0.02, 1, 0);
        let calls = |code: &str, protocol: &str| {
            f.calls
                .with_label_values(&["l", "a.A", "up", "a.A", "M", code, protocol])
                .get()
        };
        assert_eq!(
            (
                calls("OK", "grpc"),
                calls("NOT_FOUND", "grpc"),
                calls("NOT_FOUND", "json")
            ),
            (1, 1, 1)
        );
        // No gRPC-Web call yet: no gRPC-Web series.
        let exported = prometheus::core::Collector::collect(&f.calls)[0]
            .get_metric()
            .len();
        assert_eq!(exported, 2 * 17);
        let msgs = |d: &str| f.messages.with_label_values(&["up", "a.A", "M", d]).get();
        assert_eq!((msgs("request"), msgs("response")), (5, 2));
        assert_eq!(
            f.duration
                .with_label_values(&["up", "a.A", "M"])
                .get_sample_count(),
            3
        );
    }

    #[test]
    fn pairs_beyond_the_bound_share_other_and_the_bound_is_per_listener() {
        let f = families(2);
        let one = RouteMethods::new(f.clone(), "l", "*", "up");
        let two = RouteMethods::new(f.clone(), "l", "b.B", "up");
        let elsewhere = RouteMethods::new(f.clone(), "l2", "*", "up");
        let a = one.for_finished_call("/a.A/M", "a.A", "M", true);
        let _b = two.for_finished_call("/b.B/M", "b.B", "M", true);
        let c = one.for_finished_call("/c.C/M", "c.C", "M", true);
        let d = one.for_finished_call("/d.D/M", "d.D", "M", true);
        assert!(
            Arc::ptr_eq(&c, &d),
            "both beyond the bound: the shared `other`"
        );
        assert!(!Arc::ptr_eq(&a, &c));
        assert!(Arc::ptr_eq(
            &one.for_finished_call("/a.A/M", "a.A", "M", true),
            &a
        ));
        // Already admitted on this listener: its own series on another route too.
        let b_again = one.for_finished_call("/b.B/M", "b.B", "M", true);
        assert!(!Arc::ptr_eq(&b_again, &c));
        assert!(!Arc::ptr_eq(
            &elsewhere.for_finished_call("/c.C/M", "c.C", "M", true),
            &c
        ));
        c.call_finished(Code::Ok, Protocol::Grpc, 0.0, 0, 0);
        d.call_finished(Code::Ok, Protocol::Grpc, 0.0, 0, 0);
        assert_eq!(
            f.calls
                .with_label_values(&["l", "*", "up", OTHER, OTHER, "OK", "grpc"])
                .get(),
            2
        );
        assert_eq!(
            one.table.load().len(),
            3,
            "a.A/M, b.B/M and other; no c or d"
        );
    }

    #[test]
    fn made_up_methods_count_as_other_and_take_no_slot() {
        let f = families(2);
        let route = RouteMethods::new(f.clone(), "l", "*", "up");
        // A flood of names no backend knows: all `other`, no slot taken, nothing remembered.
        let made_up: Vec<_> = (0..50)
            .map(|i| {
                let path = format!("/x.X/M{i}");
                route.for_finished_call(&path, "x.X", &format!("M{i}"), false)
            })
            .collect();
        assert!(made_up.iter().all(|m| Arc::ptr_eq(m, &made_up[0])));
        assert!(route.known("/x.X/M0").is_none());
        assert_eq!(route.table.load().len(), 1, "only `other`");
        // Real methods answered by a backend still get their own series afterwards.
        let real = route.for_finished_call("/a.A/M", "a.A", "M", true);
        assert!(!Arc::ptr_eq(&real, &made_up[0]));
        assert!(Arc::ptr_eq(&route.known("/a.A/M").unwrap(), &real));
        let second = route.for_finished_call("/b.B/M", "b.B", "M", true);
        assert!(
            !Arc::ptr_eq(&second, &made_up[0]),
            "the bound of 2 was kept for them"
        );
        // A known method's unvouched call (say, refused by auth) still counts as itself.
        assert!(Arc::ptr_eq(
            &route.for_finished_call("/a.A/M", "a.A", "M", false),
            &real
        ));
    }
}
