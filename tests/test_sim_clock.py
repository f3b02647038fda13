"""The simulated clock's pure logic: lockstep, the compute-fair training budget, the pacer."""

from __future__ import annotations

import math

import pytest

from scarls.sim.clock import (
    IDLE_NS,
    NS,
    ClockError,
    Lockstep,
    Pacer,
    TrainingBudget,
    step_ns,
)

TICK = step_ns(30.0)


def test_step_matches_rclpy_timer_rounding():
    # rclpy turns a timer period into int(period_s * 1e9) ns: the clock steps by the same
    assert TICK == int(1.0 / 30.0 * 1e9) == 33_333_333
    assert step_ns(50.0) == 20_000_000
    with pytest.raises(ClockError):
        step_ns(0.0)


def test_lockstep_waits_for_every_expected_participant_before_the_first_step():
    ls = Lockstep({'/ecu0/driver', '/ecu0/actor'})
    assert ls.blocking(TICK) == ['/ecu0/actor', '/ecu0/driver']
    ls.report('/ecu0/driver', TICK)
    assert ls.blocking(TICK) == ['/ecu0/actor']
    assert not ls.may_advance(TICK)
    ls.report('/ecu0/actor', TICK)
    assert ls.may_advance(TICK)
    # the next tick needs both again
    assert ls.blocking(2 * TICK) == ['/ecu0/actor', '/ecu0/driver']


def test_lockstep_idle_participant_holds_nothing_and_a_new_round_holds_again():
    ls = Lockstep({'/ecu0/actor', '/ecu0/learner'})
    ls.report('/ecu0/actor', 5 * TICK)
    ls.report('/ecu0/learner', IDLE_NS)
    assert ls.idle('/ecu0/learner')
    assert ls.may_advance(5 * TICK)
    # the learner starts a round at 5 ticks: the latest report counts, not the largest
    ls.report('/ecu0/learner', 5 * TICK)
    assert ls.may_advance(5 * TICK)
    ls.report('/ecu0/actor', 6 * TICK)
    assert ls.blocking(6 * TICK) == ['/ecu0/learner']


def test_lockstep_unknown_reporter_joins_and_drop_releases():
    ls = Lockstep(set())
    assert ls.may_advance(TICK)
    ls.report('/ecu1/actor', 0)
    assert ls.blocking(TICK) == ['/ecu1/actor']
    ls.drop('/ecu1/actor')
    assert ls.may_advance(TICK)
    with pytest.raises(ClockError):
        ls.report('', TICK)


def test_budget_allows_rate_times_elapsed_simulated_time():
    b = TrainingBudget(steps_per_second=30.0, start_ns=10 * NS)
    assert b.allowed(10 * NS) == 0
    assert b.allowed(9 * NS) == 0                 # before the round: nothing
    assert b.allowed(10 * NS + NS // 2) == 15
    assert b.allowed(11 * NS) == 30
    assert b.allowed(10 * NS + 60 * NS) == 1800   # exact over a long round (integer ns)
    assert b.may_step(14, 10 * NS + NS // 2)
    assert not b.may_step(15, 10 * NS + NS // 2)


@pytest.mark.parametrize('rate', [0.0, -1.0, math.inf, math.nan])
def test_budget_refuses_impossible_rates(rate):
    with pytest.raises(ClockError):
        TrainingBudget(rate, 0)


@pytest.mark.parametrize('rate', [7.0, 30.0, 12.5, 3.0])
def test_budget_done_until_holds_the_clock_exactly_while_the_learner_is_behind(rate):
    """The learner's report lets the clock past ``now`` iff it has done what ``now`` allows."""
    b = TrainingBudget(rate, start_ns=3 * TICK)
    for tick in range(3, 200):
        now = tick * TICK
        allowed = b.allowed(now)
        for done in range(max(0, allowed - 3), allowed + 3):
            until = b.done_until(done, now)
            assert (until >= now) == (done >= allowed), (tick, done, until)


def test_lockstep_with_budget_gives_each_learner_its_steps_per_simulated_second():
    """A small simulation of the protocol: a clock, one actor and two learners with different
    speeds in wall time (one does a step per loop, the other one per three loops). After one
    simulated second both have done exactly the budget: the slow one costs wall time only."""
    rate = 20.0
    ls = Lockstep({'a', 'fast', 'slow'})
    budgets = {'fast': TrainingBudget(rate, TICK), 'slow': TrainingBudget(rate, TICK)}
    done = {'fast': 0, 'slow': 0}
    now, loops = TICK, 0
    while now < TICK + NS:
        loops += 1
        ls.report('a', now)   # the actor finishes each tick at once
        for who, b in budgets.items():
            if b.may_step(done[who], now) and (who == 'fast' or loops % 3 == 0):
                done[who] += 1
            ls.report(who, b.done_until(done[who], now))
        if ls.may_advance(now):
            now += TICK
    assert done['fast'] == done['slow'] == budgets['fast'].allowed(now - TICK)
    assert done['fast'] in (19, 20)   # 30 ticks of 33 333 333 ns fall 10 ns short of 1 s
    assert loops > now // TICK   # the slow learner cost extra loops (wall time), not steps


def test_pacer_real_time_factor_schedule():
    p = Pacer(TICK, rtf=2.0)
    assert p.wall_period_ns == TICK // 2
    assert p.due_in_ns(0) == 0
    p.advanced(0)
    assert p.due_in_ns(0) == TICK // 2
    p.advanced(TICK // 2)
    assert p.due_in_ns(TICK // 2) == TICK // 2
    assert p.late_steps == 0
    # a step 10 periods late restarts the schedule (no burst of catch-up steps)
    late = TICK // 2 + 10 * (TICK // 2)
    p.advanced(late)
    assert p.late_steps == 1
    assert p.due_in_ns(late) == TICK // 2
    assert p.achieved_rtf(late) == pytest.approx(2 * TICK / late)


def test_pacer_unpaced_and_bad_values():
    p = Pacer(TICK, rtf=0.0)
    p.advanced(5)
    assert p.due_in_ns(5) <= 0
    assert math.isnan(Pacer(TICK, 1.0).achieved_rtf(10))
    with pytest.raises(ClockError):
        Pacer(0, 1.0)
    with pytest.raises(ClockError):
        Pacer(TICK, math.inf)


def test_sim_time_nodes_puts_every_node_on_the_clock_and_lists_the_participants():
    from scarls.bringup import BringupError, ecu_nodes, fleet_nodes, sim_time_nodes

    specs = sim_time_nodes(ecu_nodes('ecu3', learner=True), rtf=0.5, rate_hz=30.0)
    clock = specs[0]
    assert (clock.name, clock.module, clock.namespace) == ('clock', 'scarls.sim.clock_node', '')
    assert clock.parameters['rtf'] == 0.5 and clock.parameters['rate_hz'] == 30.0
    assert clock.parameters['participants'] == ['/ecu3/driver', '/ecu3/actor']
    assert all(s.parameters['use_sim_time'] is True for s in specs[1:])
    assert all('train_steps_per_s' not in s.parameters for s in specs)
    # compute-fair: the learners are budgeted and waited for too
    fair = sim_time_nodes(fleet_nodes(2), rtf=0.0, rate_hz=30.0, train_steps_per_s=45.0)
    assert fair[0].parameters['participants'] == [
        '/ecu0/driver', '/ecu0/actor', '/ecu0/learner',
        '/ecu1/driver', '/ecu1/actor', '/ecu1/learner']
    assert [s.parameters['train_steps_per_s'] for s in fair if s.name == 'learner'] == [45.0] * 2
    with pytest.raises(BringupError):
        sim_time_nodes(specs[1:], rtf=-1.0, rate_hz=30.0)
