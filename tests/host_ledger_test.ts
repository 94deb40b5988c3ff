import assert from "node:assert/strict";
// deno-lint-ignore no-import-prefix -- test-only packages stay out of deno.json, see tests/deno.lock
import fc from "npm:fast-check@4.11.0";
import { HostLedger, type SentHost, type SyncedHost } from "../lib/limit/host_ledger.ts";

const H = "api.example";

Deno.test("ledger: an asked slot is held once Redis grants it, and given back with the next call", () => {
  const ledger = new HostLedger();
  ledger.ask(H, 2);
  assert.equal(ledger.syncCount(H), 0, "an acquire not sent yet reaches Redis after a sync");
  const sent = ledger.send(H);
  assert.deepEqual(sent, { asks: 1, releases: 0, floor: 0, trusted: true });
  assert.equal(ledger.canSync(H), false, "no sync while a call is in flight");
  assert.equal(ledger.answered(H, sent, 1), false);
  assert.equal(ledger.canSync(H), true);
  assert.equal(ledger.held(H), 1);
  assert.equal(ledger.release(H, { keep: false, failFast: false, until: 0 }), "queued");
  assert.equal(ledger.release(H, { keep: false, failFast: false, until: 0 }), "none");
  assert.equal(ledger.collect(H), false, "a release not sent keeps the host");
  const release = ledger.send(H);
  assert.equal(release.releases, 1);
  assert.equal(ledger.collect(H), false, "a call in flight keeps the host");
  ledger.answered(H, release, 0);
  assert.equal(ledger.collect(H), true);
});

Deno.test("ledger: a host due for a sync while busy holds its new calls until it is synced", () => {
  const ledger = new HostLedger();
  ledger.ask(H, 1);
  const sent = ledger.send(H);
  ledger.wantSync(H);
  ledger.ask(H, 1);
  assert.equal(ledger.hasWork(H), false, "the new acquire waits for the sync");
  assert.equal(ledger.answered(H, sent, 1), true, "nothing in flight: sync now");
  const synced = ledger.sync(H);
  assert.equal(synced.count, 1);
  assert.equal(ledger.hasWork(H), false, "still waiting for the sync's answer");
  assert.equal(ledger.synced(H, synced, 1), true, "the waiting acquire goes now");
  assert.equal(ledger.send(H).asks, 1);
});

Deno.test("ledger: a kept slot serves the next acquire and goes back when swept", () => {
  const ledger = new HostLedger();
  ledger.ask(H, 0);
  ledger.answered(H, ledger.send(H), 1);
  assert.equal(ledger.release(H, { keep: true, failFast: false, until: 5 }), "kept");
  assert.equal(ledger.held(H), 0);
  assert.equal(ledger.syncCount(H), 1, "a kept slot stays counted in Redis");
  assert.equal(ledger.takeKept(H), true);
  assert.equal(ledger.held(H), 1);
  ledger.release(H, { keep: true, failFast: false, until: 6 });
  assert.equal(ledger.giveBackKept(H, Infinity, false), 1);
  assert.equal(ledger.send(H).releases, 1);
});

Deno.test("ledger: kept slots go back soonest due first; a new request takes the one kept longest", () => {
  const ledger = new HostLedger();
  for (let i = 0; i < 3; i++) ledger.ask(H, 0);
  ledger.answered(H, ledger.send(H), 3);
  for (const until of [2_000, 100, 150]) ledger.release(H, { keep: true, failFast: false, until });
  assert.deepEqual(ledger.get(H)?.kept, [100, 150, 2_000]);
  assert.equal(ledger.giveBackKept(H, 1, false), 1);
  assert.deepEqual(ledger.get(H)?.kept, [150, 2_000]);
  assert.equal(ledger.takeKept(H), true);
  assert.deepEqual(ledger.get(H)?.kept, [150]);
});

Deno.test("ledger: failure modes count locally and mark the host for the next sync", () => {
  const ledger = new HostLedger();
  ledger.admitUncounted(H);
  assert.equal(ledger.release(H, { keep: false, failFast: true, until: 0 }), "uncounted");
  assert.equal(ledger.admitLocal(H, 1), true);
  assert.equal(ledger.admitLocal(H, 1), false);
  assert.equal(ledger.get(H)?.dirty, true);
  assert.equal(ledger.release(H, { keep: false, failFast: true, until: 0 }), "dirty");
  const synced = ledger.sync(H);
  assert.equal(synced.count, 0);
  assert.equal(ledger.collect(H), false, "a sync in flight keeps the host");
  ledger.synced(H, synced, 1);
  assert.equal(ledger.collect(H), true);
});

Deno.test("ledger: a sync that saw an older change leaves the host dirty", () => {
  const ledger = new HostLedger();
  ledger.markDirty(H);
  const synced = ledger.sync(H);
  ledger.markDirty(H);
  ledger.synced(H, synced, 1);
  assert.equal(ledger.get(H)?.dirty, true);
});

// ---------------------------------------------------------------------------
// A model of the fleet: workers with a ledger each, a Redis that applies each
// worker's calls in any order (a Cluster redirects and retries them), and
// requests holding the slots granted. Random sequences of acquires, releases,
// lost answers, lost keys, restarts and heartbeats must never let the fleet
// hold more than the limit, and once everything settles nothing is left.

const LIMIT = 3;

type Call =
  | { kind: "acquire"; sent: SentHost }
  | { kind: "sync"; synced: SyncedHost };

interface Answer {
  call: Call;
  granted: number;
}

class Worker {
  ledger = new HostLedger();
  wire: Call[] = [];
  answers: Answer[] = [];
  /** Slots the worker's requests hold. */
  inUse = 0;
  /** Calls sent since Redis lost its keys, not yet all answered. */
  afterLoss = false;
}

class Fleet {
  workers = [new Worker(), new Worker()];
  /** Each worker's field of the host in Redis. */
  fields = [0, 0];
  /** Redis lost its keys and no sync written after that has landed yet. */
  lost = [false, false];
  now = 0;

  sum(): number {
    return this.fields.reduce((a, b) => a + b, 0);
  }

  /** Redis applies the call of worker `w` at `pick` (modulo the calls in flight). */
  process(w: number, pick = 0): void {
    const wire = this.workers[w].wire;
    if (wire.length === 0) return;
    const [call] = wire.splice(pick % wire.length, 1);
    if (call.kind === "sync") {
      this.fields[w] = call.synced.count;
      this.lost[w] = false;
      this.workers[w].answers.push({ call, granted: 0 });
      return;
    }
    const { sent } = call;
    this.fields[w] = Math.max(0, this.fields[w] - sent.releases);
    let lostKeys = this.lost.some(Boolean);
    if (this.fields[w] < sent.floor) {
      // Below what the worker knows it holds, its last write landed: only a
      // loss of keys may explain it, else the ledger gave a slot back twice.
      assert.ok(!sent.trusted || this.lost[w], `worker ${w}'s field fell below its floor`);
      if (sent.trusted) lostKeys = true;
      this.fields[w] = sent.floor;
    }
    let granted = 0;
    for (let i = 0; i < sent.asks; i++) {
      if (!lostKeys && this.sum() < LIMIT) {
        this.fields[w]++;
        granted++;
      }
    }
    this.workers[w].answers.push({ call, granted });
  }

  /** Worker `w` takes in its answer at `pick`; `trust` false: as after a lost connection. */
  deliver(w: number, trust: boolean, pick = 0): void {
    const worker = this.workers[w];
    if (worker.answers.length === 0) return;
    const [answer] = worker.answers.splice(pick % worker.answers.length, 1);
    const { call } = answer;
    if (call.kind === "sync") {
      if (worker.ledger.synced(H, call.synced, this.now)) this.flush(w);
      return;
    }
    let syncNow: boolean;
    if (trust) {
      syncNow = worker.ledger.answered(H, call.sent, answer.granted);
      worker.inUse += answer.granted;
    } else {
      syncNow = worker.ledger.distrusted(H, call.sent, answer.granted);
    }
    if (syncNow) this.syncNow(w);
  }

  /** Worker `w`'s call at `pick` gets no answer (a timeout): Redis may have applied it or not. */
  drop(w: number, fromWire: boolean, pick = 0): void {
    const worker = this.workers[w];
    const list: { call: Call }[] = fromWire
      ? worker.wire.map((call) => ({ call }))
      : worker.answers;
    if (list.length === 0) return;
    const at = pick % list.length;
    const { call } = list[at];
    (fromWire ? worker.wire : worker.answers).splice(at, 1);
    if (call.kind === "sync") {
      if (worker.ledger.syncFailed(H)) this.flush(w);
    } else if (worker.ledger.failed(H, call.sent)) this.syncNow(w);
  }

  syncNow(w: number): void {
    const worker = this.workers[w];
    if (worker.ledger.canSync(H)) worker.wire.push({ kind: "sync", synced: worker.ledger.sync(H) });
  }

  /** Sends the worker's work, one call of the host in flight at a time (as its slot does). */
  flush(w: number): void {
    const { ledger, wire } = this.workers[w];
    if (ledger.hasWork(H) && ledger.get(H)!.calls === 0) {
      wire.push({ kind: "acquire", sent: ledger.send(H) });
    }
  }

  heartbeat(w: number): void {
    const { ledger } = this.workers[w];
    if (!ledger.has(H)) return;
    if (ledger.canSync(H)) this.syncNow(w);
    else ledger.wantSync(H);
  }

  /** Worker `w` crashes; its lease passes and Redis forgets its field; it starts again empty. */
  restart(w: number): void {
    this.workers[w] = new Worker();
    this.fields[w] = 0;
  }

  /** Redis loses the host's keys (`FLUSHALL`, a restart). */
  loseKeys(): void {
    this.fields = this.fields.map(() => 0);
    this.lost = this.workers.map((worker) => worker.ledger.has(H));
  }

  step(op: number, w: number, flag: boolean, pick: number): void {
    const worker = this.workers[w];
    this.now++;
    switch (op) {
      case 0:
        if (flag && worker.ledger.takeKept(H)) worker.inUse++;
        else worker.ledger.ask(H, LIMIT);
        break;
      case 1:
        return this.flush(w);
      case 2:
      case 3:
        return this.process(w, pick);
      case 4:
        return this.deliver(w, true, pick);
      case 5:
        if (worker.inUse === 0) return;
        worker.inUse--;
        worker.ledger.release(H, { keep: flag, failFast: false, until: this.now });
        break;
      case 6:
        worker.ledger.giveBackKept(H, Infinity, false);
        break;
      case 7:
        return this.heartbeat(w);
      case 8:
        return this.drop(w, flag, pick);
      case 9:
        return this.deliver(w, false, pick);
      case 10:
        return flag ? this.restart(w) : this.loseKeys();
    }
  }

  /** Everything in flight lands; every request gives its slot back; a heartbeat. */
  settle(): void {
    this.workers.forEach((worker, w) => {
      const drain = () => {
        for (let i = 0; i < 100; i++) {
          this.flush(w);
          if (worker.wire.length === 0 && worker.answers.length === 0) return;
          while (worker.wire.length > 0) this.process(w);
          while (worker.answers.length > 0) this.deliver(w, true);
        }
      };
      this.flush(w);
      drain();
      while (worker.inUse > 0) {
        worker.inUse--;
        worker.ledger.release(H, { keep: false, failFast: false, until: this.now });
      }
      worker.ledger.giveBackKept(H, Infinity, false);
      this.flush(w);
      drain();
      this.heartbeat(w);
      drain();
    });
  }

  check(): void {
    this.workers.forEach((worker, w) => {
      const s = worker.ledger.get(H);
      assert.equal(worker.ledger.held(H), worker.inUse, "the ledger holds what the requests hold");
      if (s) {
        assert.ok(s.counted >= 0 && s.pending >= 0 && s.asks >= 0 && s.releases >= 0);
        assert.ok(s.asks <= s.pending);
      }
      if (!this.lost.some(Boolean)) {
        assert.ok(
          this.fields[w] >= worker.inUse,
          `worker ${w}'s field ${this.fields[w]} is below the ${worker.inUse} slots it holds`,
        );
      }
    });
    this.workers.forEach((worker, w) => {
      const s = worker.ledger.get(H);
      if (worker.wire.length > 0 || worker.answers.length > 0 || this.lost[w]) return;
      if (s && !s.dirty) {
        assert.equal(
          this.fields[w],
          s.counted + s.releases,
          `with nothing in flight, worker ${w}'s field is what its ledger counts`,
        );
      }
    });
    if (!this.lost.some(Boolean)) {
      const inUse = this.workers.reduce((a, x) => a + x.inUse, 0);
      assert.ok(inUse <= LIMIT, `the fleet holds ${inUse} slots, over the limit ${LIMIT}`);
    }
  }
}

Deno.test("ledger: under any order of calls, answers, losses and heartbeats the fleet stays within its limit and nothing leaks", () => {
  const step = fc.tuple(fc.nat(10), fc.nat(1), fc.boolean(), fc.nat(7));
  fc.assert(
    fc.property(fc.array(step, { minLength: 20, maxLength: 200, size: "max" }), (steps) => {
      const fleet = new Fleet();
      for (const [op, w, flag, pick] of steps) {
        fleet.step(op, w, flag, pick);
        fleet.check();
      }
      fleet.settle();
      fleet.check();
      fleet.workers.forEach((worker, w) => {
        assert.equal(fleet.fields[w], 0, `worker ${w} left ${fleet.fields[w]} slots counted`);
        assert.equal(worker.ledger.collect(H) || !worker.ledger.has(H), true);
      });
    }),
    { numRuns: 2_000 },
  );
});
