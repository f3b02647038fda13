// scarls fleet dashboard: polls /api/state once a second and draws it. No build step.
'use strict';

const COLORS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2',
  '#7f7f7f', '#bcbd22', '#17becf'];
const PHASE_COLORS = {
  INIT: '#9e9e9e', IDLE: '#cfd8dc', INFERENCE: '#43a047', HUMANINTERVENTION: '#fbc02d',
  SUCCESS: '#1e88e5', FAIL: '#e53935', ABORTED: '#795548', UNKNOWN: '#eeeeee',
};
const PHASE_WINDOW_S = 120;
// the ECU's cameras come with its state (discovered from its camera topics); these until then
const CAMERAS = ['top', 'left', 'right'];
const CAMERA_PERIOD_MS = 500;
const SVG_NS = 'http://www.w3.org/2000/svg';

// What the page holds; tests read it (plots' data lengths, number of updates).
const dash = window.scarlsDashboard = {state: null, plots: {}, updates: 0, errors: 0};
const ecuColors = {};

function colorOf(ecu) {
  if (!(ecu in ecuColors)) ecuColors[ecu] = COLORS[Object.keys(ecuColors).length % COLORS.length];
  return ecuColors[ecu];
}

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'style') el.style.cssText = v;
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

function s(tag, attrs, text) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

const pct = v => (v === null || v === undefined ? '-' : `${Math.round(100 * v)} %`);
const fixed = (v, d = 4) => (v === null || v === undefined ? '-' : Number(v).toFixed(d));
const secs = v => (v === null || v === undefined ? '-' : `${Number(v).toFixed(v < 10 ? 2 : 1)} s`);
const clock = t => (t ? new Date(t * 1000).toLocaleTimeString() : '-');

// ---- ECU cards ------------------------------------------------------------------------------
const cards = {};

function card(ecu, cameras) {
  if (cards[ecu]) return cards[ecu];
  const el = h('div', {class: 'card', 'data-ecu': ecu});
  const head = h('div', {class: 'card-head'},
    h('span', {class: 'swatch', style: `background:${colorOf(ecu)}`}),
    h('b', {class: 'ecu-id'}, ecu), h('span', {class: 'phase'}, '?'),
    h('span', {class: 'since'}), h('span', {class: 'beat'}));
  const strip = h('canvas', {class: 'phase-strip', height: '14'});
  const kv = h('table', {class: 'kv'});
  const fields = {};
  for (const [key, label] of [['episode', 'episode'], ['saved', 'saved'], ['recent', 'recent'],
    ['model', 'model'], ['driver', 'robot'], ['health', 'health'], ['learner', 'learner'],
    ['train', 'training']]) {
    fields[key] = h('td', {'data-field': key});
    kv.append(h('tr', {}, h('th', {}, label), fields[key]));
  }
  const progress = h('div', {class: 'progress'}, h('div', {class: 'bar'}));
  fields.train.append(progress);
  fields.trainText = h('span');
  fields.train.append(fields.trainText);
  const cams = h('div', {class: 'cams'});
  const imgs = {};
  for (const cam of (cameras && cameras.length ? cameras : CAMERAS)) {
    imgs[cam] = h('img', {class: 'none', alt: `${ecu} ${cam}`, 'data-cam': cam, title: `${ecu} camera/${cam}`});
    cams.append(h('figure', {}, imgs[cam], h('figcaption', {}, cam)));
  }
  el.append(head, strip, kv, cams);
  document.getElementById('ecus').append(el);
  const c = {el, head, strip, fields, imgs, progress, cams, loading: 0};
  cards[ecu] = c;
  return c;
}

function renderCard(e, now) {
  const c = card(e.id, e.cameras);
  const phase = c.head.querySelector('.phase');
  phase.textContent = e.phase;
  phase.style.background = PHASE_COLORS[e.phase] || '#eee';
  c.head.querySelector('.since').textContent = e.phase_since ? `for ${Math.max(0, now - e.phase_since).toFixed(0)} s` : '';
  const beat = c.head.querySelector('.beat');
  beat.textContent = e.heartbeat_age_s === null ? 'no heartbeat' : (e.silent ? `SILENT ${e.heartbeat_age_s.toFixed(0)} s` : '');
  c.el.classList.toggle('silent', e.silent);
  c.fields.episode.textContent = `#${e.episode_id}: ${e.steps} steps, ${e.intervention_steps} by human${e.intervening ? ' (human in control)' : ''}`;
  c.fields.saved.textContent = `${e.episodes} episodes, ${e.successes_without_help} without help`;
  c.fields.recent.textContent = `${pct(e.recent_success_rate)} succeeded without help, ${pct(e.recent_intervention_rate)} of steps by human`;
  c.fields.model.textContent = `running v${e.model_version}, deployed v${e.deployed_version}`;
  c.fields.driver.textContent = e.driver ? `${e.driver}${e.driver_reason ? ` (${e.driver_reason})` : ''}` : '-';
  c.fields.driver.className = ['estopped', 'fault'].includes(e.driver) ? 'alarm' : '';
  // /diagnostics of the ECU's nodes: the ones not OK, or how many are; every entry on hover
  const health = e.health || [];
  const bad = health.filter((x) => x.level !== 'OK');
  c.fields.health.textContent = !health.length ? '-' : (bad.length
    ? bad.map((x) => `${x.level} ${x.name}: ${x.message}`).join('; ')
    : `OK (${health.length} nodes)`);
  c.fields.health.className = ['ERROR', 'STALE'].includes(e.health_level) ? 'alarm'
    : (e.health_level === 'WARN' ? 'warn' : '');
  c.fields.health.dataset.level = e.health_level || '';
  c.fields.health.title = health.map((x) => `${x.level} ${x.name}: ${x.message}`).join('\n');
  const l = e.learner;
  if (l) {
    c.fields.learner.textContent = `${l.state}${l.detail ? ` (${l.detail})` : ''}: ${l.rounds} rounds, v${l.version} ${l.approved ? 'approved' : 'rejected'}, loss ${fixed(l.loss)}, error ${fixed(l.metric)}`;
    const frac = l.round_steps ? l.round_step / l.round_steps : 0;
    c.progress.firstChild.style.width = `${Math.round(100 * frac)}%`;
    c.fields.trainText.textContent = l.round_steps ? ` ${l.round_step}/${l.round_steps} steps, ${l.samples_trained} samples, ${l.online_episodes} online + ${l.offline_episodes} offline episodes` : '';
  } else {
    c.fields.learner.textContent = 'no learner heard';
    c.fields.trainText.textContent = '';
    c.progress.firstChild.style.width = '0';
  }
  drawPhaseStrip(c.strip, e.phases, now);
}

function drawPhaseStrip(canvas, phases, now) {
  const w = canvas.clientWidth || 300;
  if (canvas.width !== w) canvas.width = w;
  const ctx = canvas.getContext('2d');
  const t0 = now - PHASE_WINDOW_S;
  ctx.clearRect(0, 0, w, canvas.height);
  for (let i = 0; i < phases.length; i++) {
    const start = Math.max(phases[i][0], t0);
    const end = i + 1 < phases.length ? phases[i + 1][0] : now;
    if (end < t0) continue;
    ctx.fillStyle = PHASE_COLORS[phases[i][1]] || '#eee';
    const x = ((start - t0) / PHASE_WINDOW_S) * w;
    ctx.fillRect(x, 0, Math.max(1, ((end - start) / PHASE_WINDOW_S) * w), canvas.height);
  }
  canvas.title = `FSM phases, last ${PHASE_WINDOW_S} s`;
}

// Cameras: one request per image at a time, a few per second, only while the page is visible.
function refreshCameras() {
  const on = document.getElementById('cameras-on').checked;
  for (const [ecu, c] of Object.entries(cards)) {
    c.cams.style.display = on ? '' : 'none';
    if (!on || document.hidden || c.el.classList.contains('silent')) continue;
    for (const cam of Object.keys(c.imgs)) {
      const img = c.imgs[cam];
      if (img.dataset.busy === '1') continue;
      img.dataset.busy = '1';
      const next = new Image();
      next.onload = () => { img.src = next.src; img.dataset.busy = '0'; img.classList.remove('none'); };
      next.onerror = () => { img.dataset.busy = '0'; img.classList.add('none'); };
      next.src = `/api/camera/${encodeURIComponent(ecu)}/${cam}.jpg?t=${Date.now()}`;
    }
  }
}

// ---- plots (uPlot) --------------------------------------------------------------------------
function plotWidth(el) { return Math.max(200, el.clientWidth - 4); }

function timePlot(key, elId, tables, series, opts = {}) {
  // tables: [[xs, ys...], ...] (one per source); series: uPlot series options, same order
  const el = document.getElementById(elId);
  const data = tables.length ? uPlot.join(tables) : [[]];
  const signature = series.map(x => x.label).join('|');
  let p = dash.plots[key];
  if (p && p.signature !== signature) { p.plot.destroy(); p = null; }
  if (!p) {
    const plot = new uPlot({
      width: plotWidth(el), height: opts.height || 190,
      scales: {x: {time: true}, y: opts.y || {}},
      axes: [{}, {size: 60, values: opts.values}],
      legend: {live: false},
      series: [{}, ...series.map(x => Object.assign({spanGaps: true, width: 1.5}, x))],
    }, data, el);
    p = dash.plots[key] = {plot, signature, el, points: 0};
  } else {
    p.plot.setData(data);
  }
  p.points = data[0].length;
  el.classList.toggle('nodata', !p.points);
  return p;
}

const precise = (u, v) => v.map(x => (x === null ? '' : Number(x.toPrecision(2)).toString()));
const positive = ys => ys.map(v => (v !== null && v > 0 ? v : null));

function renderPlots(st) {
  const ecus = st.ecus;
  timePlot('success', 'plot-success',
    ecus.filter(e => e.rates.t.length).map(e => [e.rates.t, e.rates.success]),
    ecus.filter(e => e.rates.t.length).map(e => ({label: e.id, stroke: colorOf(e.id)})),
    {y: {range: [0, 1]}, values: (u, v) => v.map(x => (x === null ? '' : `${Math.round(100 * x)}%`))});
  timePlot('human', 'plot-human',
    ecus.filter(e => e.rates.t.length).map(e => [e.rates.t, e.rates.human]),
    ecus.filter(e => e.rates.t.length).map(e => ({label: e.id, stroke: colorOf(e.id)})),
    {y: {range: [0, 1]}, values: (u, v) => v.map(x => (x === null ? '' : `${Math.round(100 * x)}%`))});
  const learners = ecus.filter(e => e.learning.t.length);
  timePlot('loss', 'plot-loss',
    learners.map(e => [e.learning.t, positive(e.learning.loss)]),
    learners.map(e => ({label: e.id, stroke: colorOf(e.id)})), {y: {distr: 3}, values: precise});
  timePlot('metric', 'plot-metric',
    learners.map(e => [e.learning.t, positive(e.learning.metric), positive(e.learning.deployed_metric)]),
    learners.flatMap(e => [{label: `${e.id} candidate`, stroke: colorOf(e.id)},
      {label: `${e.id} deployed`, stroke: colorOf(e.id), dash: [6, 4]}]), {y: {distr: 3}, values: precise});
  const lat = st.latency;
  const pts = {paths: () => null, points: {show: true, space: 0, size: 6}};
  const tables = [];
  const series = [];
  if (lat.ingest.recent.length) {
    tables.push([lat.ingest.recent.map(r => r[0]), lat.ingest.recent.map(r => r[2])]);
    series.push({label: 'episode ingestion', stroke: '#6a1b9a', ...pts});
  }
  if (lat.distribution.recent.length) {
    tables.push([lat.distribution.recent.map(r => r[0]), lat.distribution.recent.map(r => r[3])]);
    series.push({label: 'checkpoint distribution', stroke: '#00838f', ...pts});
  }
  timePlot('latency', 'plot-latency', tables.map(sortTable), series,
    {y: {distr: 3}, values: (u, v) => v.map(x => (x === null ? '' : `${x} s`))});
}

function sortTable([xs, ys]) {
  const idx = xs.map((_, i) => i).sort((a, b) => xs[a] - xs[b]);
  return [idx.map(i => xs[i]), idx.map(i => ys[i])];
}

// ---- checkpoint lineage (SVG) ---------------------------------------------------------------
function renderLineage(ecus) {
  const root = document.getElementById('lineage');
  root.replaceChildren();
  const withCkpts = ecus.filter(e => e.checkpoints.length);
  if (!withCkpts.length) { root.append(h('p', {class: 'empty'}, 'no checkpoint announced yet')); return; }
  const width = Math.max(300, root.clientWidth - 8);
  for (const e of withCkpts) {
    const ck = e.checkpoints.slice(-40);
    const metrics = ck.map(c => c.metric).filter(m => m !== null && m > 0);
    const lo = Math.log10(Math.min(...metrics, 1e9));
    const hi = Math.log10(Math.max(...metrics, 1e-12));
    const height = 120;
    const pad = 26;
    const x = i => pad + 44 + (ck.length > 1 ? (i * (width - 2 * pad - 44)) / (ck.length - 1) : 0);
    const y = m => (m === null || m <= 0 || !metrics.length ? height - 14 : (hi - lo < 1e-9 ? height / 2
      : 10 + ((hi - Math.log10(m)) / (hi - lo)) * (height - 34)));
    const svg = s('svg', {width, height, class: 'lineage', 'data-ecu': e.id});
    svg.append(s('text', {x: 2, y: 12, class: 'label'}, e.id));
    if (metrics.length) {
      svg.append(s('text', {x: 2, y: 26, class: 'axis'}, Math.pow(10, hi).toPrecision(2)));
      svg.append(s('text', {x: 2, y: height - 22, class: 'axis'}, Math.pow(10, lo).toPrecision(2)));
    }
    const pos = {};
    ck.forEach((c, i) => { pos[c.version] = [x(i), y(c.metric)]; });
    for (const c of ck) {
      const [cx, cy] = pos[c.version];
      if (c.parent in pos) {
        const [px, py] = pos[c.parent];
        svg.append(s('line', {x1: px, y1: py, x2: cx, y2: cy, class: 'edge'}));
      } else if (c.parent > 0) {
        svg.append(s('line', {x1: cx - 20, y1: cy, x2: cx, y2: cy, class: 'edge missing'}));
      }
    }
    for (const c of ck) {
      const [cx, cy] = pos[c.version];
      const g = s('g', {class: `ckpt ${c.approved ? 'approved' : 'rejected'}${c.deployed ? ' deployed' : ''}${c.current ? ' current' : ''}`});
      if (c.deployed) g.append(s('circle', {cx, cy, r: 9, class: 'ring'}));
      g.append(s('circle', {cx, cy, r: c.current ? 7 : 5, class: 'dot'}));
      g.append(s('text', {x: cx, y: height - 2, class: 'ver'}, `v${c.version}${c.round !== null ? ` r${c.round}` : ''}`));
      g.append(s('title', {}, [`v${c.version} (parent v${c.parent}) open-loop error ${fixed(c.metric, 5)}`,
        c.approved ? 'approved' : 'rejected by the gate',
        c.round !== null ? `from fleet round ${c.round}` : null,
        c.deployed ? `deployed ${clock(c.deployed)}` : 'not deployed',
        c.running ? `running since ${clock(c.running)}` : null,
        c.distribution_latency_s !== null ? `distribution ${secs(c.distribution_latency_s)}` : null,
      ].filter(Boolean).join('\n')));
      svg.append(g);
    }
    root.append(svg);
  }
  const rows = withCkpts.flatMap(e => e.checkpoints.map(c => ({ecu: e.id, ...c})))
    .sort((a, b) => b.published - a.published).slice(0, 10);
  root.append(table(['ECU', 'version', 'parent', 'open-loop error', 'gate', 'round', 'deployed',
    'running', 'distribution'], rows.map(c => [c.ecu, `v${c.version}`, `v${c.parent}`,
    fixed(c.metric, 5), c.approved ? 'approved' : 'rejected', c.round ?? '-', clock(c.deployed),
    c.current ? 'now' : clock(c.running), secs(c.distribution_latency_s)])));
}

function table(head, rows) {
  return h('table', {class: 'grid'}, h('thead', {}, h('tr', {}, ...head.map(x => h('th', {}, x)))),
    h('tbody', {}, ...rows.map(r => h('tr', {}, ...r.map(x => h('td', {}, x))))));
}

// ---- fleet rounds ---------------------------------------------------------------------------
function renderRounds(rounds) {
  const plot = document.getElementById('rounds-plot');
  const tab = document.getElementById('rounds-table');
  plot.replaceChildren();
  tab.replaceChildren();
  if (!rounds.length) { plot.append(h('p', {class: 'empty'}, 'no fleet round yet (fleet learners only)')); return; }
  const last = rounds.slice(-30);
  const width = Math.max(260, plot.clientWidth - 8);
  const height = 130;
  const bw = Math.min(40, (width - 30) / last.length);
  const svg = s('svg', {width, height, class: 'rounds'});
  last.forEach((r, i) => {
    let y0 = height - 20;
    const total = Object.values(r.weights).reduce((a, b) => a + b, 0) || 1;
    for (const [ecu, w] of Object.entries(r.weights).sort()) {
      const hgt = ((height - 30) * w) / total;
      const rect = s('rect', {x: 24 + i * bw, y: y0 - hgt, width: Math.max(1, bw - 2), height: hgt, fill: colorOf(ecu)});
      rect.append(s('title', {}, `round ${r.round}: ${ecu} weight ${w.toFixed(3)}, error ${fixed(r.metrics[ecu], 5)}`));
      svg.append(rect);
      y0 -= hgt;
    }
    const mark = r.selector_passed === null ? '' : (r.selector_passed ? '\u2713' : '\u2717');
    svg.append(s('text', {x: 24 + i * bw + bw / 2 - 1, y: height - 6, class: `sel ${r.selector_passed ? 'ok' : 'bad'}`}, mark));
  });
  svg.append(s('text', {x: 0, y: 12, class: 'axis'}, '1.0'));
  plot.append(svg);
  const rows = rounds.slice(-8).reverse().map(r => [r.round, r.participants.join(', ') || '-',
    Object.entries(r.weights).map(([k, w]) => `${k} ${w.toFixed(2)}`).join(', ') || '-',
    r.selector_passed === null ? '-' : (r.selector_passed ? 'passed' : 'rejected'),
    Object.entries(r.version).map(([k, v]) => `${k} v${v}`).join(', ') || '-',
    Object.entries(r.status).map(([k, v]) => `${k} ${v}`).join(', ')]);
  tab.append(table(['round', 'participants', 'weights', 'selector', 'versions', 'status'], rows));
}

// ---- latencies, episodes --------------------------------------------------------------------
function renderLatency(st) {
  const root = document.getElementById('latency-numbers');
  const row = (name, l) => [name, l.count, secs(l.p50), secs(l.p99), secs(l.max)];
  const rows = [row('episode ingestion (all)', st.latency.ingest),
    row('checkpoint distribution (all)', st.latency.distribution)];
  for (const e of st.ecus) {
    if (e.ingest.count) rows.push(row(`ingestion ${e.id}`, e.ingest));
    if (e.distribution.count) rows.push(row(`distribution ${e.id}`, e.distribution));
  }
  root.replaceChildren(table(['latency', 'n', 'p50', 'p99', 'max'], rows));
}

function renderEpisodes(ecus) {
  const rows = ecus.flatMap(e => e.recent_episodes.map(x => ({ecu: e.id, ...x})))
    .sort((a, b) => b.t - a.t).slice(0, 15);
  const root = document.getElementById('episodes');
  if (!rows.length) { root.replaceChildren(h('p', {class: 'empty'}, 'no episode saved since the dashboard started')); return; }
  root.replaceChildren(table(['saved', 'ECU', 'episode', 'outcome', 'steps', 'by human', 'model',
    'dropped', 'visible after'], rows.map(r => [clock(r.t), r.ecu, r.index, r.outcome, r.steps,
    pct(r.human_share), `v${r.model_version}`, r.dropped_steps, secs(r.finalize_seconds)])));
}

// ---- main loop ------------------------------------------------------------------------------
function render(st) {
  const silent = st.ecus.filter(e => e.silent).length;
  document.getElementById('summary').textContent = `${st.ecus.length} ECU${st.ecus.length === 1 ? '' : 's'}`
    + `${silent ? `, ${silent} silent` : ''}, updated ${clock(st.now)}`;
  for (const e of st.ecus) renderCard(e, st.now);
  renderPlots(st);
  renderLineage(st.ecus);
  renderRounds(st.rounds);
  renderLatency(st);
  renderEpisodes(st.ecus);
}

async function poll() {
  const conn = document.getElementById('conn');
  try {
    const r = await fetch('/api/state', {cache: 'no-store'});
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const st = await r.json();
    dash.state = st;
    render(st);
    dash.updates++;
    conn.className = 'conn ok';
    conn.title = 'connected';
  } catch (err) {
    dash.errors++;
    conn.className = 'conn bad';
    conn.title = `no answer from the dashboard: ${err}`;
  } finally {
    setTimeout(poll, document.hidden ? 5000 : 1000);
  }
}

window.addEventListener('resize', () => {
  for (const p of Object.values(dash.plots)) p.plot.setSize({width: plotWidth(p.el), height: p.plot.height});
});
setInterval(refreshCameras, CAMERA_PERIOD_MS);
poll();
