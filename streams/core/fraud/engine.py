"""Live fraud rules (hacked accounts, toll fraud): per-user state in, (fraud alerts, account actions) out.

One ``FraudState`` per user (``streams.core.state``), read and written through a ``Store``, holds
what the rules need and nothing older:

* the user's calls of the last ~26 h (start, end or open, talk time, a rate-deck/scope prefix of the
  callee — never the whole number, when the call became known), the duplicate filter and the
  clock of every call rule;
* per-day call counters and the current same-callee run of each rule;
* the source networks (/24, /64) and the devices (binding identities) the user registered from,
  its SIP bindings, and the registrations from a new network while another binding was active
  (24 h); the user's first event (its learning period) and its customer;
* the (rule, level, window) triples already alerted, so that each alert is emitted once;
* an analyst's verdicts (``fraud-feedback``): the networks trusted for the user, and the rules muted
  for the user until a given instant.

One ``CustomerState`` per customer holds its first event and the networks its users registered
from: a network a colleague uses is not new for the user.

"Now" is the event time of the event being processed (a ``start`` event's ``start_time``, an
``end`` event's ``end_time``, a registration's ``time``) for the rules an event triggers. The live
rules (``cost_burst``, ``long_call``) are evaluated by time instead (``on_time``): at each event of
the user and at each instant they could next fire, once the caller knows it has read every input
up to that instant (its watermark). A call in progress is then valued and timed up to that
instant from what was known of it by then, so an alert fires when the threshold is crossed, with
that instant as its time, even if the user sends nothing else — and a REGISTER read ahead of the
CDRs never makes an open call look longer than it is.
"""

from __future__ import annotations

from typing import Any

from ..callee import Callee
from ..plans import Plan, PlanBook
from ..rates import RateDeck
from ..rating import number_hash_key
from ..records import OPEN, CallEvent, Feedback, Registration
from ..state import CustomerState, FraudState, Store
from ..timeutil import DAY_MS, HOUR_MS, MINUTE_MS, SECOND_MS
from .alerts import Evaluation, FraudOutcome
from .destinations import Destinations
from .patterns import pattern_rules
from .rules import (FRESH_NETWORK_MS, NO_DUE, PlanRules, count_rules, known_at, live_rules, long_call, network_of,
                    new_network)

# A call event this much older than the newest call event of its user (a registration: than the
# newest registration) is ignored: fraud alerting is live, and the state does not reach that far back.
STALE_MS = DAY_MS
# A call is kept this long after its last instant (end, or start + max call duration while open):
# longer than STALE_MS plus the 60-minute windows, so every non-stale duplicate is still recognised.
KEEP_CALLS_MS = 26 * HOUR_MS
# ... and at most this many calls per user, the newest: the rules look at a user's last hour or
# minutes, and a user past five hundred calls there has crossed every count threshold already. Ended
# calls go first, oldest first; an open call stays (long_call times it) unless open ones alone are
# too many. So a dialler's state, and the cost of each of its events, stay bounded.
MAX_CALLS = 500
# Day counters and alerted windows are kept long enough to cover a local day (≤ 25 h) that a
# non-stale event can still reach.
KEEP_WINDOWS_MS = 50 * HOUR_MS
MAX_TRUSTED_NETWORKS = 256  # networks an analyst trusted for one user: the oldest go beyond this
MAX_DEVICES = 32  # binding identities remembered per user: the least recently registered go beyond this
MAX_CUSTOMER_NETWORKS = 256  # networks remembered per customer: the least recently used go beyond this
CUSTOMER_REFRESH_MS = 6 * HOUR_MS
EVIDENCE_NETWORKS = 20  # at most this many of the customer's networks listed in an alert's evidence  # a customer's network is rewritten at most this often per use
PRUNE_EVERY_MS = 10 * MINUTE_MS  # the state is walked for pruning at most this often (event time)


class FraudEngine:
    """Applies the fraud rules of each user's plan (``Plan.fraud``) to one event at a time."""

    def __init__(
        self,
        plans: PlanBook,
        rates: RateDeck,
        *,
        hash_secret: bytes = b"",
        max_call_duration_s: int = 4 * 3600,
    ) -> None:
        self.plans = plans
        self.rates = rates
        self.hash_key = number_hash_key(hash_secret)  # of the callees' hashes (see Callee)
        self.max_call_ms = max_call_duration_s * SECOND_MS
        self.destinations = Destinations(plans, rates)
        configs = [plan.fraud for plan in plans.plans.values()]
        self._network_days = max(
            (r.days for c in configs for r in c.rules if r.kind == "new_network"), default=0
        )
        self._rules: dict[str, PlanRules] = {}

    @property
    def enabled(self) -> bool:
        """False when no plan has a fraud rule: the caller may skip the engine (and its table)."""
        return any(plan.fraud for plan in self.plans.plans.values())

    # -- CDRs ---------------------------------------------------------------------------------

    def on_call(self, store: Store, ev: CallEvent, *, plan: Plan | None = None,
                callee: Callee | None = None) -> FraudOutcome:
        """One ``cdrs`` event. ``plan``: the user's plan (None: from the store), ``callee``: the
        event's called number when the caller has it already."""
        the_plan = plan if plan is not None else self.plans.resolve(store.plan_of(ev.user))
        if not the_plan.fraud:
            return FraudOutcome("ok")
        rules = self._compiled(the_plan)
        now = ev.event_ms
        state = store.get_fraud(ev.user) or FraudState(since=now)
        if state.newest_call_ms and now < state.newest_call_ms - STALE_MS:
            return FraudOutcome("stale")
        record = state.calls.get(ev.call_id)
        if record is not None and (record[1] != OPEN or not ev.is_end):
            # a redelivery (after a restart, say) changes nothing, but the live rules are due at
            # its instant as at the first delivery's: the clock is not kept in the state
            return FraudOutcome("duplicate", due=now if record[4] and self._compiled(the_plan).live else -1)
        new = record is None
        if record is None:
            if callee is None:
                callee = Callee(ev.callee, self.rates, self.hash_key)
            key, counted = self.destinations.classify(callee, ev.direction, the_plan.fraud)
            record = [ev.start_ms, OPEN, 0, key, counted, now]  # known from this event on
            state.calls[ev.call_id] = record
            if len(state.calls) > MAX_CALLS:
                _evict(state.calls, ev.call_id)
        if ev.is_end:
            assert ev.end_ms is not None
            record[0], record[1], record[2] = ev.start_ms, ev.end_ms, ev.billsec * SECOND_MS
        state.newest_call_ms = max(state.newest_call_ms, now)
        if state.customer != ev.customer:
            state.customer = ev.customer
        if now < state.since:  # the topics are not read in step: the first event may be read later
            state.since = now
        self._prune(state)

        ctx = Evaluation(ev.user, ev.customer, the_plan, state, now, FraudOutcome("ok"), self.destinations,
                         self.max_call_ms)
        if new and record[4] and rules.on_new_call:
            assert callee is not None  # classified above: a new call
            count_rules(ctx, rules, ev.call_id, ev.start_ms, record[3], callee)
        if new and ev.is_end and record[4]:  # a call known only from its end: timed at its end
            for rule in rules.long_call:
                long_call(ctx, rule, ev.call_id, record, record[2], False)
        if rules.patterns:
            pattern_rules(ctx, rules.patterns, store, self.plans, ev, record, callee if new else None, self.hash_key)
        if rules.live and record[4]:
            ctx.outcome.due = now  # the live rules, once every input is read up to this event
        store.put_fraud(ev.user, state)
        return ctx.outcome

    def on_time(self, store: Store, user: str, at: int, *, plan: Plan | None = None) -> FraudOutcome:
        """The live rules of ``user`` at the instant ``at`` (event time), which the caller has read
        every input up to. The outcome's ``due``: when to evaluate the user again, if nothing
        else comes first."""
        the_plan = plan if plan is not None else self.plans.resolve(store.plan_of(user))
        state = store.get_fraud(user)
        if state is None or not the_plan.fraud:
            return FraudOutcome("ok")
        rules = self._compiled(the_plan)
        if not rules.live:
            return FraudOutcome("ok")
        ctx = Evaluation(user, state.customer, the_plan, state, at, FraudOutcome("ok"), self.destinations,
                         self.max_call_ms)
        ctx.outcome.due = live_rules(ctx, rules)
        if ctx.outcome.alerts:
            store.put_fraud(user, state)
        return ctx.outcome

    @staticmethod
    def resume_at(state: FraudState) -> int:
        """After a restart (the clock is not kept in the state): the earliest instant from which
        the user's live rules may still have something to raise — when the first call still open,
        or ended within the last hour of its calls, became known (NO_DUE: none). Evaluating again
        an instant evaluated before the restart raises nothing twice: fired windows are kept."""
        due = NO_DUE
        recent = state.newest_call_ms - HOUR_MS
        for record in state.calls.values():
            if record[4] and (record[1] == OPEN or record[1] >= recent):
                known = known_at(record)
                due = known if due == NO_DUE else min(due, known)
        return due

    def _compiled(self, plan: Plan) -> PlanRules:
        rules = self._rules.get(plan.name)
        if rules is None or rules.plan is not plan:
            rules = self._rules[plan.name] = PlanRules.of(plan)
        return rules

    # -- registrations ------------------------------------------------------------------------

    def on_registration(self, store: Store, reg: Registration, *, plan: Plan | None = None) -> FraudOutcome:
        """One ``sip-registrations`` event. ``plan`` as in ``on_call``.

        new_network learns: a network is not new while the user, or its customer, is in its
        learning period (``learning_days``, ``customer_learning_days`` after its first event), nor
        when another user of the same customer registered from it within the rule's ``days``."""
        the_plan = plan if plan is not None else self.plans.resolve(store.plan_of(reg.user))
        config = the_plan.fraud
        if not config:
            return FraudOutcome("ok")
        now = reg.time_ms
        state = store.get_fraud(reg.user) or FraudState(since=now)
        if state.newest_registration_ms and now < state.newest_registration_ms - STALE_MS:
            return FraudOutcome("stale")
        identity = reg.binding
        network = network_of(reg.source_ip)
        entry = [now, now + reg.expires * SECOND_MS, network or ""]
        current = state.bindings.get(identity)
        if current == entry:
            return FraudOutcome("duplicate")
        if current is not None and current[0] > now:
            return FraudOutcome("late")  # an older REGISTER than the binding held

        fresh = False
        memory = min((r.days for r in config.rules if r.kind == "new_network"), default=0)
        customer: CustomerState | None = None
        if memory and reg.expires > 0 and network is not None:
            customer, known = self._customer_saw(store, reg.customer, network, now, memory)
            others = any(k != identity and s <= now < e for k, (s, e, _n) in state.bindings.items())
            previous = state.networks.get(network, -1)
            learning = (now < state.since + config.learning_days * DAY_MS
                        or now < customer.since + config.customer_learning_days * DAY_MS)
            # a device the user registered before (its binding identity) moving to another network
            # is the user on the move; a stranger registers a device of its own
            device = state.devices.get(identity, -1) >= now - memory * DAY_MS
            # new for the rule with the shortest memory; each rule checks its own `days` when counting
            if (others and not learning and not device and previous < now - memory * DAY_MS
                    and network not in state.trusted and not known):
                state.fresh.append([now, network, previous])
                fresh = True
            state.networks[network] = max(previous, now)
            state.devices[identity] = now
            if len(state.devices) > MAX_DEVICES:
                for old in sorted(state.devices, key=lambda d: (state.devices[d], d))[:-MAX_DEVICES]:
                    del state.devices[old]
        # an unregister stays as an expired binding, so that its redelivery is a duplicate
        state.bindings[identity] = entry
        state.newest_registration_ms = max(state.newest_registration_ms, now)
        if state.customer != reg.customer:
            state.customer = reg.customer
        if now < state.since:
            state.since = now
        self._prune(state)
        self._prune_networks(state)

        ctx = Evaluation(reg.user, reg.customer, the_plan, state, now, FraudOutcome("ok"), self.destinations,
                         self.max_call_ms)
        if fresh:
            assert customer is not None and network is not None  # fresh: both were looked at
            theirs = sorted(n for n in customer.networks if n != network)[:EVIDENCE_NETWORKS]
            for rule in config.rules:
                if rule.kind == "new_network":
                    new_network(ctx, rule, reg, identity, theirs)
        store.put_fraud(reg.user, state)
        return ctx.outcome

    def _customer_saw(self, store: Store, name: str, network: str, now: int,
                      memory_days: int) -> tuple[CustomerState, bool]:
        """The customer's record, with this use of ``network`` recorded (rewritten in the store at
        most every ``CUSTOMER_REFRESH_MS`` per network), and whether a user of the customer had
        registered from it within ``memory_days`` before."""
        customer = store.get_customer(name)
        created = customer is None
        if customer is None:
            customer = CustomerState(since=now)
        last = customer.networks.get(network, -1)
        known = last >= now - memory_days * DAY_MS
        if created or last < now - CUSTOMER_REFRESH_MS or now < customer.since:
            customer.since = min(customer.since, now)
            customer.networks[network] = max(last, now)
            horizon = now - max(self._network_days, 1) * DAY_MS
            for old in [n for n, at in customer.networks.items() if at < horizon]:
                del customer.networks[old]
            if len(customer.networks) > MAX_CUSTOMER_NETWORKS:
                for old in sorted(customer.networks, key=lambda n: (customer.networks[n], n))[:-MAX_CUSTOMER_NETWORKS]:
                    del customer.networks[old]
            store.put_customer(name, customer)
        return customer, known

    # -- an analyst's verdicts ----------------------------------------------------------------

    def on_feedback(self, store: Store, feedback: Feedback) -> FraudOutcome:
        """One ``fraud-feedback`` message: trust its networks for the user, mute its rule until its
        instant. ``duplicate`` when the state already holds the verdict (a redelivery, or the same
        verdict given twice): applying it again changes nothing."""
        state = store.get_fraud(feedback.user) or FraudState()
        changed = False
        for network in feedback.networks:
            if network not in state.trusted:
                state.trusted[network] = feedback.time_ms
                changed = True
        if len(state.trusted) > MAX_TRUSTED_NETWORKS:
            for network in sorted(state.trusted, key=lambda n: (state.trusted[n], n))[:-MAX_TRUSTED_NETWORKS]:
                del state.trusted[network]
        until = feedback.mute_until_ms
        if until is not None and until > state.muted.get(feedback.rule_name, 0):
            state.muted[feedback.rule_name] = until
            changed = True
        if not changed:
            return FraudOutcome("duplicate")
        store.put_fraud(feedback.user, state)
        return FraudOutcome("ok")

    # -- alerts, actions, pruning -------------------------------------------------------------

    def _prune(self, state: FraudState) -> None:
        """Keep the state bounded: drop what no non-stale event can reach any more.

        Every horizon below is hours beyond the reach of a non-stale event, so walking the state at
        most once per ``PRUNE_EVERY_MS`` of event time keeps exactly the same outputs for a
        fraction of the cost. Networks are the exception — an alert's evidence shows when a
        network was last used, so they are pruned on every registration (``_prune_networks``)."""
        tc, tr = state.newest_call_ms, state.newest_registration_ms
        if max(tc, tr) < state.prune_due:
            return
        state.prune_due = max(tc, tr) + PRUNE_EVERY_MS
        horizon = tc - KEEP_CALLS_MS
        cap = self.max_call_ms
        for call_id in [c for c, r in state.calls.items() if (r[0] + cap if r[1] == OPEN else r[1]) < horizon]:
            del state.calls[call_id]
        # a window fired by either kind of event stays remembered until both have moved past it: the
        # topics are not read in step, and a window forgotten too early fires again, with other evidence
        windows = (min(tc, tr) if tc and tr else max(tc, tr)) - KEEP_WINDOWS_MS
        if state.days:
            for key in [k for k, (_n, last) in state.days.items() if last < tc - KEEP_WINDOWS_MS]:
                del state.days[key]
        if state.fired:
            for key in [k for k, at in state.fired.items() if at < windows]:
                del state.fired[key]
        if state.runs:
            for name in [n for n, run in state.runs.items() if run[3] < tc - KEEP_WINDOWS_MS]:
                del state.runs[name]
        if state.bindings:
            for identity in [k for k, b in state.bindings.items() if b[1] < tr - DAY_MS]:
                del state.bindings[identity]
        if state.fresh:
            state.fresh = [f for f in state.fresh if f[0] >= tr - FRESH_NETWORK_MS]
        if state.muted:
            for name in [n for n, until in state.muted.items() if until < windows]:
                del state.muted[name]

    def _prune_networks(self, state: FraudState) -> None:
        memory = max(self._network_days, 1) * DAY_MS
        tr = state.newest_registration_ms
        for network in [n for n, last in state.networks.items() if last < tr - memory]:
            del state.networks[network]
        for device in [d for d, last in state.devices.items() if last < tr - memory]:
            del state.devices[device]


def _evict(calls: dict[str, list[Any]], keep: str) -> None:
    """Bring ``calls`` back to nine tenths of ``MAX_CALLS`` (so that this runs once per hundred
    new calls): the ended calls first, in the order they became known, then (open calls alone too
    many) the oldest open ones; never ``keep``, the new call."""
    excess = len(calls) - MAX_CALLS * 9 // 10
    ended = [c for c, r in calls.items() if r[1] != OPEN and c != keep][:excess]
    for call_id in ended:
        del calls[call_id]
    excess -= len(ended)
    if excess > 0:
        for call_id in [c for c in calls if c != keep][:excess]:
            del calls[call_id]
