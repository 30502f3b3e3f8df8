//! Single account lookups (`/user?accountId=`, `/user/email?accountId=`) answered from the
//! per-account objects bulk lookups keep, and merged into bulk calls when they miss.
//!
//! A single lookup whose own entry is missing, of a route `cache.merge.routes` names, is
//! answered:
//! 1. from a fresh object of its account (any bulk lookup, or merged call, of the same
//!    partition and `expand` set stored it) — no call at all (`reused`);
//! 2. else by one bulk call shared with every lookup of its scope that misses meanwhile
//!    (`merge`): its points are shared among the lookups it served, each charging its own
//!    caller; the bulk call's burst token is spent once;
//! 3. else — its account omitted from the bulk answer (not proof of a 404), the leader's call
//!    refused by the leader's own limits, the leader gone — by upstream's own single answer,
//!    as every other read.
//!
//! Invariants: steps 1 and 2 only where this site's single and bulk answers were seen to agree
//! (`shapes`); until then the first single lookup to miss is asked upstream as it is, and its
//! answer compared with a bulk answer of the same account (one extra call). An answer made
//! from an object is stored under the lookup's own key, fresh no longer than the object, with
//! the headers of the bulk answer upstream gave the same partition. A failure of a merged call
//! reaches each lookup as its own answer would (an expired entry within stale-if-error stands
//! in; nothing is stored). Answers upstream varies on request headers besides
//! `Accept-Encoding` are never made from objects (the comparison reports them as disagreeing).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, Response, StatusCode};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::bulk::{self, Envelope, Scope};
use super::key::normalized_query;
use super::merge::{Batch, Batches, Closing, Joined};
use super::read::{Call, Settled};
use super::refresh::Refreshed;
use super::shapes::{Agreement, Family};
use super::{
    Buffered, Cache, Directive, Entry, Fetched, Forward, Found, Lifetime, Lookup, Origin, Outcome,
    Partition, Served, Stored, Tier,
};
use crate::body::Body;
use crate::coding::Coding;
use crate::error::GatewayError;
use crate::quota;

/// How long a batch of refreshes gathers the scope's other lookups due for one before its call.
const REFRESH_GATHER: Duration = Duration::from_millis(20);

/// A single lookup the per-account objects may answer.
#[derive(Debug, Clone)]
pub struct SinglePlan {
    scope: Scope,
    id: String,
}

/// What a merged call left for one of its lookups.
#[derive(Clone)]
pub(super) enum Merged {
    /// Its account's object, the envelope it came with, and the points this lookup's caller is
    /// charged for it.
    Found {
        account: Arc<Entry>,
        envelope: Arc<Entry>,
        share: u32,
    },
    /// Not in the bulk answer; `share`: the points this lookup's caller is charged (the
    /// call's own point, when it led).
    Omitted {
        share: u32,
    },
    /// Upstream answered the call with an error status.
    Answer(Arc<Buffered>),
    Failed(GatewayError),
    /// The call was refused by its leader's own limits, or upstream's answer cannot be used for
    /// lookups (streamed): each asks on its own.
    Alone,
}

impl Cache {
    /// The plan for a single lookup the per-account objects may answer: a plain
    /// `accountId=…` (with a documented `expand` set) of a route `cache.merge.routes` names, in
    /// a caller's own partition.
    pub fn single_plan(&self, lookup: &Lookup, query: Option<&str>) -> Option<SinglePlan> {
        let family = Family::of(lookup.route)?;
        if lookup.route != family.single()
            || !self.config.bulk_entities
            || !self.config.merge.of(lookup.route)
            || lookup.directive != Directive::Normal
            || lookup.partition == Partition::Shared
        {
            return None;
        }
        let mut id = None;
        let mut expand = String::new();
        for (name, value) in normalized_query(query) {
            let value = std::str::from_utf8(&value).ok()?;
            match name.as_ref() {
                b"accountId" if id.is_none() && !value.is_empty() && !value.contains(',') => {
                    id = Some(value.to_owned());
                }
                b"expand" if family == Family::User => {
                    if !value.split(',').all(|v| bulk::EXPANDABLE.contains(&v)) {
                        return None;
                    }
                    expand = value.to_owned();
                }
                // Anything else is left to the whole-answer cache, as forwarded.
                _ => return None,
            }
        }
        Some(SinglePlan {
            scope: self.scope(lookup.partition, family, expand),
            id: id?,
        })
    }

    /// Answers a single lookup whose own entry is not fresh (see the module doc).
    pub async fn single_read(
        self: &Arc<Self>,
        lookup: Lookup,
        found: Found,
        plan: SinglePlan,
        request_headers: &HeaderMap,
        origin: Arc<dyn Origin>,
    ) -> Result<(Response<Body>, Served), GatewayError> {
        let (family, expand) = (plan.scope.family, plan.scope.expand.as_str());
        let fallback = match found {
            Found::Missing { fallback } => fallback,
            // Refreshed in one bulk call with the scope's other due lookups, where it may be.
            Found::RefreshAhead(entry)
                if self.shapes.agreement(family, expand) == Agreement::Agree
                    && !self.quota.site.low() =>
            {
                self.refresh_packed(lookup, plan, entry.clone(), request_headers, origin);
                return self.hit(&lookup, entry, request_headers);
            }
            found => return self.read(lookup, found, request_headers, origin).await,
        };
        let alone = |fallback| Found::Missing { fallback };
        if self.shapes.claim_check(family, expand) {
            return self
                .read_and_compare(lookup, fallback, plan, request_headers, origin)
                .await;
        }
        if self.shapes.agreement(family, expand) != Agreement::Agree {
            return self
                .read(lookup, alone(fallback), request_headers, origin)
                .await;
        }
        // The cluster's copy of the lookup's own answer, before any call.
        if let Some(entry) = self.find_shared(lookup, request_headers).await {
            let saved = Some(entry.points);
            let outcome = Outcome::Hit(Tier::Cluster);
            return self.serve(&lookup, entry, request_headers, outcome, saved);
        }
        let max_age = lookup.lifetime.ttl;
        if let Some((account, envelope)) = self.fresh_account(&plan.scope, &plan.id, max_age) {
            let made = (account.status == StatusCode::OK)
                .then(|| self.materialize(&lookup, &account, &envelope, request_headers))
                .flatten();
            let Some(entry) = made else {
                // Omitted from a bulk answer: upstream's own single answer decides.
                return self
                    .read(lookup, alone(fallback), request_headers, origin)
                    .await;
            };
            let saved = entry.points;
            self.metrics
                .account_lookups(lookup.route, "reused", 1, u64::from(saved));
            let outcome = Outcome::Hit(Tier::Memory);
            return self.serve(&lookup, entry, request_headers, outcome, Some(saved));
        }
        match self.merged(&plan, origin.clone()).await {
            Merged::Found {
                account,
                envelope,
                share,
            } => {
                origin.charge(share).await;
                let Some(entry) = self.materialize(&lookup, &account, &envelope, request_headers)
                else {
                    return self
                        .read(lookup, alone(fallback), request_headers, origin)
                        .await;
                };
                let saved = entry.points.saturating_sub(share);
                self.metrics
                    .account_lookups(lookup.route, "merged", 1, u64::from(saved));
                let outcome = Outcome::Forwarded {
                    why: Forward::Miss,
                    collapsed: true,
                    stored: Stored::Yes,
                };
                self.serve(&lookup, entry, request_headers, outcome, Some(saved))
            }
            Merged::Omitted { share } => {
                origin.charge(share).await;
                self.read(lookup, alone(fallback), request_headers, origin)
                    .await
            }
            Merged::Alone => {
                self.read(lookup, alone(fallback), request_headers, origin)
                    .await
            }
            Merged::Answer(answer) => self.respond(
                Settled::Answer(answer),
                &lookup,
                request_headers,
                fallback,
                (Forward::Miss, true),
            ),
            Merged::Failed(error) => self.respond(
                Settled::Failed(error),
                &lookup,
                request_headers,
                fallback,
                (Forward::Miss, true),
            ),
        }
    }

    /// This lookup's share of a merged call: it joins the open batch of its scope, or opens
    /// one and leads it (in a task of its own, so the call answers every waiter even when the
    /// leader's request goes away). Waits at most `cache.coalesce_timeout`.
    async fn merged(self: &Arc<Self>, plan: &SinglePlan, origin: Arc<dyn Origin>) -> Merged {
        let bytes = bulk::encoded_len(&plan.id) + 1;
        let receiver = match self.merges.join(&plan.scope, &plan.id, bytes) {
            Joined::Member(receiver) => receiver,
            Joined::Leader(batch, receiver) => {
                self.lead_merged(plan.scope.clone(), batch, origin, Call::Merged);
                receiver
            }
        };
        self.answer_of(receiver).await
    }

    /// What a batch's leader answered this lookup, waited for at most `cache.coalesce_timeout`.
    async fn answer_of(&self, receiver: tokio::sync::oneshot::Receiver<Merged>) -> Merged {
        match tokio::time::timeout(self.config.coalesce_timeout, receiver).await {
            Ok(Ok(merged)) => merged,
            // The leader went away without an answer, or took too long.
            Ok(Err(_)) | Err(_) => Merged::Alone,
        }
    }

    /// The batches of `call`: merged lookups', or refreshes'.
    fn batches(&self, call: Call) -> &Batches<Scope, Merged> {
        match call {
            Call::Refresh => &self.refreshes,
            Call::Merged | Call::Compare => &self.merges,
        }
    }

    /// The leader's bulk call for its batch: admitted first, then the batch closed and sent;
    /// its objects stored; each waiter answered with its own account. A batch of refreshes
    /// gathers for [`REFRESH_GATHER`] first (nobody waits for it), and its call is the lowest
    /// priority ([`Call::Refresh`]).
    fn lead_merged(
        self: &Arc<Self>,
        scope: Scope,
        batch: Arc<Batch<Merged>>,
        origin: Arc<dyn Origin>,
        call: Call,
    ) {
        let this = self.clone();
        tokio::spawn(
            async move {
                let _closing = Closing {
                    batches: this.batches(call),
                    scope: &scope,
                    batch: &batch,
                };
                if call == Call::Refresh {
                    tokio::time::sleep(REFRESH_GATHER).await;
                }
                let route = scope.family.bulk();
                let (closing, closed_scope, closed_batch) =
                    (this.clone(), scope.clone(), batch.clone());
                let query = Box::new(move || {
                    let ids = closing.batches(call).close(&closed_scope, &closed_batch);
                    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
                    bulk::upstream_query(&ids, &closed_scope.expand)
                });
                let fetched = origin.fetch_for(route, call, query).await;
                // Closed whatever happened (a refused call never closed it).
                let ids = this.batches(call).close(&scope, &batch);
                let found = match fetched {
                    // A refresh not made: each keeps its entry to its expiry.
                    Ok(None) => Err(Merged::Alone),
                    Ok(Some(Fetched::Buffered(answer))) if answer.status == StatusCode::OK => {
                        this.metrics.merge_call(scope.family.single());
                        let asked: Vec<&str> = ids.iter().map(String::as_str).collect();
                        this.store_accounts(&scope, &asked, answer)
                            .map(|(envelope, accounts)| (envelope, accounts.into_iter().collect()))
                            .map_err(Merged::Failed)
                    }
                    Ok(Some(Fetched::Buffered(answer))) => {
                        this.metrics.merge_call(scope.family.single());
                        origin.charge(answer.points()).await;
                        Err(Merged::Answer(Arc::new(answer)))
                    }
                    Ok(Some(Fetched::Streamed(_) | Fetched::Undeliverable(_))) => {
                        Err(Merged::Alone)
                    }
                    Err(GatewayError::RateLimited(_)) => Err(Merged::Alone),
                    Err(error) => Err(Merged::Failed(error)),
                };
                let undelivered = match found {
                    Ok((envelope, accounts)) => {
                        answer_each(&batch, envelope, &accounts, scope.family.bulk())
                    }
                    Err(merged) => {
                        batch.answer(|_| merged.clone(), drop);
                        0
                    }
                };
                // Shares of lookups that went away are the leader's caller's to pay.
                origin.charge(undelivered).await;
            }
            .in_current_span(),
        );
    }

    /// Refreshes a single lookup's `entry` ahead of expiry in a bulk call shared with the
    /// scope's other lookups due for one (a batch of refreshes), in the background.
    fn refresh_packed(
        self: &Arc<Self>,
        lookup: Lookup,
        plan: SinglePlan,
        entry: Arc<Entry>,
        request_headers: &HeaderMap,
        origin: Arc<dyn Origin>,
    ) {
        let bytes = bulk::encoded_len(&plan.id) + 1;
        let receiver = match self.refreshes.join(&plan.scope, &plan.id, bytes) {
            Joined::Member(receiver) => receiver,
            Joined::Leader(batch, receiver) => {
                self.lead_merged(plan.scope.clone(), batch, origin.clone(), Call::Refresh);
                receiver
            }
        };
        let this = self.clone();
        let headers = request_headers.clone();
        tokio::spawn(
            async move {
                let route = lookup.route;
                let (result, points) = match this.answer_of(receiver).await {
                    Merged::Found {
                        account,
                        envelope,
                        share,
                    } => {
                        origin.charge(share).await;
                        match this.materialize(&lookup, &account, &envelope, &headers) {
                            Some(made) if made.same_content(&entry) => {
                                (Refreshed::Unchanged, share)
                            }
                            Some(_) => (Refreshed::Changed, share),
                            None => (Refreshed::Failed, share),
                        }
                    }
                    // Gone from the bulk answer: the entry keeps its own expiry.
                    Merged::Omitted { share } => {
                        origin.charge(share).await;
                        (Refreshed::Failed, share)
                    }
                    Merged::Alone => (Refreshed::Skipped, 0),
                    Merged::Answer(_) | Merged::Failed(_) => (Refreshed::Failed, 0),
                };
                this.metrics.refreshed(route, result, points);
            }
            .in_current_span(),
        );
    }

    /// A lookup's answer made from its account's object (see the module doc), stored under the
    /// lookup's own key; `None` when the object or the envelope is not of the agreed shape.
    fn materialize(
        &self,
        lookup: &Lookup,
        account: &Entry,
        envelope: &Entry,
        request_headers: &HeaderMap,
    ) -> Option<Arc<Entry>> {
        let family = Family::of(lookup.route)?;
        // An object fetched for one variant of the request never answers another.
        if envelope.varies() {
            return None;
        }
        let envelope = Envelope::from_entry(envelope)?;
        let body = family.single_from_bulk(account.plain()?, envelope.links())?;
        // Fresh no longer than the object, nor than the lookup's own route allows.
        let age = account.age(Instant::now());
        let ttl = account.lifetime().ttl.min(lookup.lifetime.ttl);
        let lifetime = Lifetime {
            ttl: ttl.saturating_sub(age),
            ..lookup.lifetime
        };
        let answer = Buffered::plain(StatusCode::OK, envelope.headers, body).priced(account.points);
        let entry = Arc::new(Entry::new(
            answer,
            request_headers,
            lifetime,
            false,
            Coding::Identity,
        ));
        self.memory.insert(lookup.key, entry.clone());
        Some(entry)
    }

    /// The first single lookup of a family and `expand` set: read as any other (stored,
    /// coalesced); then a bulk lookup of the same account is made, its objects stored as any
    /// bulk lookup's, and the answer [`Cache::materialize`] would make of them compared with the
    /// one stored (`shapes`). The lookup waits for the comparison (one round trip, once per
    /// process and `expand` set), in a task of its own so that it ends even if the lookup's
    /// request goes away.
    async fn read_and_compare(
        self: &Arc<Self>,
        lookup: Lookup,
        fallback: Option<Arc<Entry>>,
        plan: SinglePlan,
        request_headers: &HeaderMap,
        origin: Arc<dyn Origin>,
    ) -> Result<(Response<Body>, Served), GatewayError> {
        let found = Found::Missing { fallback };
        let read = self
            .read(lookup, found, request_headers, origin.clone())
            .await;
        let this = self.clone();
        let (family, expand) = (plan.scope.family, plan.scope.expand.clone());
        let compared = tokio::spawn(
            async move {
                let verdict = this.compare(&lookup, &plan, &*origin).await;
                this.shapes
                    .record(plan.scope.family, &plan.scope.expand, verdict);
            }
            .in_current_span(),
        );
        // A comparison that failed inside (a panic) decides nothing, and frees the claim for
        // a later one; the read's answer stands.
        if compared.await.is_err() {
            self.shapes.record(family, &expand, None);
        }
        read
    }

    /// The single answer stored under `lookup`'s key against the one made from a bulk lookup
    /// of its account; `None` when there is no pair to compare.
    async fn compare(
        &self,
        lookup: &Lookup,
        plan: &SinglePlan,
        origin: &dyn Origin,
    ) -> Option<Result<(), String>> {
        let stored = self
            .memory
            .get(&lookup.key)
            .filter(|entry| entry.status == StatusCode::OK)?;
        let single = match stored.plain() {
            Some(plain) => plain.clone(),
            None => stored
                .with_representation(Coding::Identity, self.config.max_entry_bytes)
                .ok()?
                .plain()?
                .clone(),
        };
        let SinglePlan { scope, id } = plan;
        let query = bulk::upstream_query(&[id.as_str()], &scope.expand);
        let fetched = origin
            .fetch_for(scope.family.bulk(), Call::Compare, Box::new(move || query))
            .await;
        let Ok(Some(Fetched::Buffered(answer))) = fetched else {
            return None;
        };
        origin.charge(answer.points()).await;
        if answer.status != StatusCode::OK {
            return None;
        }
        let (envelope, accounts) = match self.store_accounts(scope, &[id.as_str()], answer) {
            Ok(stored) => stored,
            Err(_) => return Some(Err("the bulk answer is not the documented JSON".to_owned())),
        };
        if envelope.varies() {
            return Some(Err(
                "upstream's answers vary on request headers besides Accept-Encoding".to_owned(),
            ));
        }
        let (_, account) = accounts.into_iter().find(|(i, _)| i == id)?;
        if account.status != StatusCode::OK {
            return None; // omitted: nothing to compare
        }
        let envelope = Envelope::from_entry(&envelope)?;
        let Some(made) = scope
            .family
            .single_from_bulk(account.plain()?, envelope.links())
        else {
            return Some(Err("the bulk object has no _links object".to_owned()));
        };
        Some(Family::same(&single, &made))
    }
}

/// Answers each waiter of a stored merged call: its account's object, with its share of the
/// call's points — the call's own point to the leader (the first waiter), each object's to the
/// first lookup of that account. The shares of waiters that went away.
fn answer_each(
    batch: &Batch<Merged>,
    envelope: Arc<Entry>,
    accounts: &std::collections::HashMap<String, Arc<Entry>>,
    route: crate::routes::Route,
) -> u32 {
    let per_object = quota::cost_of(route, 1) - quota::cost_of(route, 0);
    let mut call = quota::cost_of(route, 0);
    let mut paid: HashSet<&str> = HashSet::new();
    let mut undelivered = 0;
    batch.answer(
        |id| {
            let mut share = std::mem::take(&mut call);
            match accounts.get_key_value(id) {
                Some((id, account)) if account.status == StatusCode::OK => {
                    if paid.insert(id.as_str()) {
                        share += per_object;
                    }
                    Merged::Found {
                        account: account.clone(),
                        envelope: envelope.clone(),
                        share,
                    }
                }
                _ => Merged::Omitted { share },
            }
        },
        |lost| undelivered += lost.share(),
    );
    undelivered
}

impl Merged {
    /// The points this lookup's caller is charged.
    fn share(&self) -> u32 {
        match self {
            Merged::Found { share, .. } | Merged::Omitted { share } => *share,
            _ => 0,
        }
    }
}
