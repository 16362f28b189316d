//! What readers see: the answers to `backends list` (and so `stats`) and the
//! health and Kubernetes parts of `/metrics`, published by the loop after each
//! event it applies and read without it.
//!
//! A change holds the daemon for its RCU grace periods (about 1.6 s each on a
//! busy host); a reader that queued behind it would wait as long. Readers take
//! this view instead, under a lock held only to swap it: during a change in
//! flight they see the state before it (the change is not acknowledged yet),
//! and the loop publishes the new view before it acknowledges the change, so a
//! read that follows an acknowledgement sees what it acknowledged. The
//! counters themselves are read from the pinned maps, which need no loop.

use std::sync::{Arc, RwLock};

use anyhow::Result;

use crate::{
    control::{BackendView, KubernetesStats, Op, Request, Response},
    datapath::pins,
    observe::stats::{self, Snapshot},
};

/// One service as readers see it.
#[derive(Clone, Debug, Default)]
pub struct ServiceView {
    pub name: String,
    pub backends: Vec<BackendView>,
    pub fail_open: bool,
    pub kubernetes: Option<KubernetesStats>,
}

/// Every service, in the order the daemon holds them.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub interface: String,
    pub services: Vec<ServiceView>,
}

impl View {
    /// The service `name` stands for; an empty name means the only one.
    /// The errors are those of `Live::resolve_name`.
    fn resolve(&self, name: &str) -> Result<&ServiceView, String> {
        let names = || {
            self.services
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        if name.is_empty() {
            return match self.services.as_slice() {
                [only] => Ok(only),
                _ => Err(format!(
                    "this instance runs several services; name one with --service: {}",
                    names()
                )),
            };
        }
        self.services
            .iter()
            .find(|s| s.name == name)
            .ok_or_else(|| format!("no service {name:?}; services: {}", names()))
    }

    /// The answer to a `list` request.
    pub fn list(&self, service: &str) -> Response {
        match self.resolve(service) {
            Ok(s) => Response {
                ok: true,
                error: None,
                message: None,
                service: s.name.clone(),
                fail_open: s.fail_open,
                backends: s.backends.clone(),
                kubernetes: s.kubernetes.clone(),
            },
            Err(err) => Response::error(service, err),
        }
    }

    /// The counters from the pinned maps, with health and Kubernetes from
    /// this view, as `dnsteer stats --json` prints them.
    pub fn snapshot(&self) -> Result<Snapshot> {
        let found = pins::Instance::find(Some(&self.interface))?;
        let mut snapshot = stats::read(&found, false)?;
        for service in &mut snapshot.services {
            if let Some(s) = self.services.iter().find(|s| s.name == service.name) {
                stats::add_health(service, s.fail_open, &s.backends);
                service.kubernetes = s.kubernetes.clone();
            }
        }
        Ok(snapshot)
    }
}

/// The published view, shared by the loop (the only writer) and the readers.
#[derive(Clone, Debug, Default)]
pub struct Published(Arc<RwLock<Arc<View>>>);

impl Published {
    pub fn set(&self, view: View) {
        let view = Arc::new(view);
        match self.0.write() {
            Ok(mut slot) => *slot = view,
            Err(poisoned) => *poisoned.into_inner() = view,
        }
    }

    /// The view as last published; the lock is released on return.
    pub fn get(&self) -> Arc<View> {
        match self.0.read() {
            Ok(slot) => slot.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Answers `request` if it only reads (`list`); `None` for a change or
    /// `stop`, which go to the loop.
    pub fn answer(&self, request: &Request) -> Option<Response> {
        (request.op == Op::List).then(|| self.get().list(&request.service))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(names: &[&str]) -> View {
        View {
            interface: "eth0".to_owned(),
            services: names
                .iter()
                .map(|n| ServiceView {
                    name: (*n).to_owned(),
                    ..ServiceView::default()
                })
                .collect(),
        }
    }

    #[test]
    fn an_empty_name_is_the_only_service() {
        assert_eq!(view(&["dns"]).list("").service, "dns");
        let several = view(&["a", "b"]).list("");
        assert!(!several.ok);
        assert!(
            several
                .error
                .unwrap()
                .contains("name one with --service: a, b")
        );
    }

    #[test]
    fn only_list_is_answered_from_the_view() {
        let published = Published::default();
        published.set(view(&["dns"]));
        let list = Request {
            service: "dns".to_owned(),
            op: Op::List,
        };
        assert_eq!(published.answer(&list).unwrap().service, "dns");
        let missing = Request {
            service: "nope".to_owned(),
            op: Op::List,
        };
        assert!(
            published
                .answer(&missing)
                .unwrap()
                .error
                .unwrap()
                .contains("no service \"nope\"")
        );
        for op in [
            Op::Stop,
            Op::Remove {
                backend: "10.0.0.1:53".to_owned(),
            },
        ] {
            let request = Request {
                service: "dns".to_owned(),
                op,
            };
            assert!(published.answer(&request).is_none());
        }
    }
}
