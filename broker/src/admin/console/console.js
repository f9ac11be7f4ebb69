// The Rill web console: a small single-page app over the admin listener's JSON API (/v1/) and
// this broker's /metrics. No build step, no dependencies, no CDN: the broker embeds this file.
// Pages (hash routes): #/ overview, #/topics, #/topics/NAME, #/topics/NAME/partitions/P/records,
// #/groups, #/groups/NAME. Every figure comes from the API, which computes it exactly as the
// `rill` CLI does. Tables carry data-table / data-row / data-k attributes so tests can read them.
'use strict';

// ---- errors: shown on the page, never swallowed ---------------------------------------------
function reportError(text) {
  const box = document.getElementById('js-errors');
  if (box) {
    const line = document.createElement('div');
    line.className = 'js-error';
    line.textContent = 'console error: ' + text;
    box.appendChild(line);
  }
}
window.addEventListener('error', (e) => reportError(`${e.message} (${e.filename}:${e.lineno})`));
window.addEventListener('unhandledrejection', (e) =>
  reportError('unhandled: ' + ((e.reason && e.reason.message) || e.reason)));

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path) {
  let response;
  try {
    response = await fetch(path, { cache: 'no-store' });
  } catch (e) {
    throw new ApiError(0, 'cannot reach this broker\'s admin listener');
  }
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch (e) {
    if (response.ok) throw new ApiError(response.status, 'the answer is not JSON');
  }
  if (!response.ok) {
    throw new ApiError(response.status, (body && body.error) || `${response.status} ${response.statusText}`);
  }
  return body;
}

// ---- DOM helpers --------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'class') el.className = v;
    else if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

const enc = encodeURIComponent;
const fmtNum = (n) => (n === null || n === undefined ? '—' : Number(n).toLocaleString('en-US'));
function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = Number(n);
  let u = 0;
  while (v >= 1024 && u < units.length - 1) {
    v /= 1024;
    u += 1;
  }
  return (u === 0 ? v.toFixed(0) : v.toFixed(1)) + ' ' + units[u];
}
const fmtTime = (ms) => (ms === null || ms === undefined || ms < 0 ? '—' : new Date(ms).toISOString());
const list = (xs) => (xs && xs.length ? xs.join(', ') : '—');

// A table: columns [{k, label, num, render(row) -> node|text}], rows; optional rowKey and rowClass.
function table(name, columns, rows, opts = {}) {
  const head = h('tr', {}, columns.map((c) => h('th', { class: c.num ? 'num' : null }, c.label)));
  const body = rows.map((row, i) =>
    h('tr', { 'data-row': opts.rowKey ? opts.rowKey(row) : i, class: opts.rowClass ? opts.rowClass(row) : null },
      columns.map((c) => {
        const value = c.render ? c.render(row) : row[c.k];
        return h('td', { 'data-k': c.k, class: c.num ? 'num' : c.data ? 'data' : null },
          value === null || value === undefined ? '—' : value);
      })));
  return h('table', { 'data-table': name }, h('thead', {}, head), h('tbody', {}, body));
}

const card = (label, value, cls, key) =>
  h('div', { class: 'card ' + (cls || ''), 'data-card': key }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value));
const empty = (...text) => h('div', { class: 'empty', 'data-empty': true }, ...text);
const errorBox = (e) => h('div', { class: 'error', 'data-error': e.status || 0 }, e.message || String(e));
const badge = (text, cls) => h('span', { class: 'badge ' + cls }, text);

// ---- a small SVG line chart ---------------------------------------------------------------
const COLORS = ['#2f6fdf', '#1f8a4c', '#c07a00', '#8a3fd1', '#c8323c'];
const SVG = 'http://www.w3.org/2000/svg';
function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

class LiveChart {
  constructor(name, seriesNames, format, keep = 90) {
    this.series = seriesNames.map((n) => ({ name: n, points: [] }));
    this.format = format;
    this.keep = keep;
    this.svg = svg('svg', { viewBox: '0 0 600 180', preserveAspectRatio: 'none' });
    this.legend = h('div', { class: 'legend' });
    this.scale = h('div', { class: 'scale' });
    this.el = h('div', { class: 'chart', 'data-chart': name }, this.scale, this.svg, this.legend);
    this.draw();
  }
  push(values) {
    const t = Date.now();
    values.forEach((v, i) => {
      const s = this.series[i];
      s.points.push([t, v]);
      if (s.points.length > this.keep) s.points.shift();
    });
    this.draw();
  }
  draw() {
    const W = 600;
    const H = 180;
    const pad = 22;
    while (this.svg.firstChild) this.svg.removeChild(this.svg.firstChild);
    const all = this.series.flatMap((s) => s.points);
    const max = Math.max(1, ...all.map((p) => p[1]));
    const t0 = Math.min(...all.map((p) => p[0]), Date.now());
    const t1 = Math.max(...all.map((p) => p[0]), t0 + 1);
    for (let g = 0; g <= 4; g += 1) {
      const y = pad + ((H - 2 * pad) * g) / 4;
      this.svg.appendChild(svg('line', { x1: 0, x2: W, y1: y, y2: y, stroke: '#eef0f4' }));
    }
    this.scale.textContent = `top line: ${this.format(max)}`;
    this.series.forEach((s, i) => {
      if (s.points.length === 0) return;
      const pts = s.points.map(([t, v]) => {
        const x = ((t - t0) / (t1 - t0)) * (W - 2) + 1;
        const y = H - pad - (v / max) * (H - 2 * pad);
        return `${x.toFixed(1)},${y.toFixed(1)}`;
      });
      this.svg.appendChild(svg('polyline', { points: pts.join(' '), fill: 'none', stroke: COLORS[i % COLORS.length], 'stroke-width': 2 }));
    });
    while (this.legend.firstChild) this.legend.removeChild(this.legend.firstChild);
    this.series.forEach((s, i) => {
      const last = s.points.length ? this.format(s.points[s.points.length - 1][1]) : 'waiting for data';
      this.legend.appendChild(h('span', { 'data-series': s.name },
        h('span', { class: 'swatch', style: `background:${COLORS[i % COLORS.length]}` }), `${s.name}: ${last}`));
    });
  }
}

// ---- /metrics: sums of counters of this broker --------------------------------------------
async function metricSums(names) {
  const response = await fetch('/metrics', { cache: 'no-store' });
  if (!response.ok) throw new ApiError(response.status, 'metrics unavailable');
  const text = await response.text();
  const sums = Object.fromEntries(names.map((n) => [n, 0]));
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const space = line.lastIndexOf(' ');
    const brace = line.indexOf('{');
    const name = brace >= 0 ? line.slice(0, brace) : line.slice(0, space);
    if (name in sums) sums[name] += Number(line.slice(space + 1)) || 0;
  }
  return sums;
}

// ---- routing --------------------------------------------------------------------------------
let timers = [];
let generation = 0;
function every(ms, fn) {
  timers.push(setInterval(fn, ms));
}

function setState(state, page) {
  document.body.dataset.state = state;
  if (page) document.body.dataset.page = page;
}

async function route() {
  timers.forEach(clearInterval);
  timers = [];
  generation += 1;
  const mine = generation;
  const hash = decodeURIComponent(location.hash.replace(/^#\/?/, ''));
  const parts = hash.split('/').filter((p) => p.length);
  const main = document.getElementById('view');
  let page = 'overview';
  let render = () => overview(main, mine);
  if (parts[0] === 'topics' && parts.length === 1) {
    page = 'topics';
    render = () => topics(main);
  } else if (parts[0] === 'topics' && parts.length === 2) {
    page = 'topic';
    render = () => topic(main, parts[1]);
  } else if (parts[0] === 'topics' && parts.length === 5 && parts[2] === 'partitions' && parts[4] === 'records') {
    page = 'records';
    render = () => records(main, parts[1], parts[3]);
  } else if (parts[0] === 'groups' && parts.length === 1) {
    page = 'groups';
    render = () => groups(main);
  } else if (parts[0] === 'groups' && parts.length === 2) {
    page = 'group';
    render = () => group(main, parts[1], mine);
  } else if (parts.length) {
    page = 'not-found';
    render = async () => {
      main.replaceChildren(h('h1', {}, 'Not found'), empty('No page here. ', h('a', { href: '#/' }, 'Back to the overview')));
    };
  }
  const section = { topic: 'topics', records: 'topics', group: 'groups' }[page] || page;
  for (const a of document.querySelectorAll('header nav a')) {
    a.classList.toggle('active', a.dataset.nav === section);
  }
  setState('loading', page);
  try {
    await render();
    if (mine === generation) setState('ready', page);
  } catch (e) {
    if (mine !== generation) return;
    main.replaceChildren(h('h1', {}, 'Cannot show this page'), errorBox(e));
    setState('error', page);
  }
}

// ---- pages ----------------------------------------------------------------------------------
async function overview(main, mine) {
  const clusterEl = h('div', {});
  const chart = new LiveChart('throughput', ['bytes in/s', 'bytes out/s'], (v) => fmtBytes(v) + '/s');
  main.replaceChildren(
    h('h1', {}, 'Cluster'),
    clusterEl,
    h('h2', {}, 'Throughput of this broker'),
    h('p', { class: 'muted' }, 'Bytes produced to and fetched by consumers from the partitions this broker leads (its /metrics, sampled every 2 s).'),
    chart.el,
  );
  const draw = async () => {
    let cluster;
    let topicList;
    try {
      [cluster, topicList] = await Promise.all([api('/v1/cluster'), api('/v1/topics')]);
    } catch (e) {
      if (mine !== generation) return;
      clusterEl.replaceChildren(errorBox(e), h('p', { class: 'muted' }, 'Retrying every 5 s.'));
      return;
    }
    if (mine !== generation) return;
    document.getElementById('served-by').textContent = `served by broker ${cluster.served_by}`;
    const down = cluster.brokers.filter((b) => b.fenced).length;
    const under = topicList.reduce((n, t) => n + t.under_replicated, 0);
    const offline = topicList.reduce((n, t) => n + t.offline, 0);
    clusterEl.replaceChildren(
      h('div', { class: 'cards' },
        card('Cluster id', cluster.cluster_id, '', 'cluster_id'),
        card('Controller', cluster.controller === null ? 'none' : `broker ${cluster.controller}`, cluster.controller === null ? 'bad' : '', 'controller'),
        card('Quorum', cluster.quorum, '', 'quorum'),
        card('Brokers up', `${cluster.brokers.length - down} / ${cluster.brokers.length}`, down ? 'bad' : 'ok', 'brokers'),
        card('Topics', fmtNum(topicList.filter((t) => !t.internal).length), '', 'topics'),
        card('Under-replicated partitions', fmtNum(under), under ? 'bad' : 'ok', 'under_replicated'),
        card('Offline partitions', fmtNum(offline), offline ? 'bad' : 'ok', 'offline')),
      h('h2', {}, 'Brokers'),
      table('brokers', [
        { k: 'node_id', label: 'Broker', num: true },
        { k: 'address', label: 'Address' },
        { k: 'status', label: 'Status', render: (b) => (b.fenced ? badge('down', 'down') : badge('up', 'up')) },
        { k: 'voter', label: 'Controller voter', render: (b) => (b.voter ? 'yes' : 'no') },
        { k: 'is_controller', label: 'Active controller', render: (b) => (b.is_controller ? badge('controller', 'info') : '') },
      ], cluster.brokers, { rowKey: (b) => b.node_id, rowClass: (b) => (b.fenced ? 'bad' : null) }),
    );
  };
  await draw();
  every(5000, draw);
  let last = null;
  const sample = async () => {
    let sums;
    try {
      sums = await metricSums(['rill_produced_bytes_total', 'rill_consumed_bytes_total']);
    } catch (e) {
      return; // the cluster panel shows the broker as unreachable
    }
    const now = Date.now();
    if (last && mine === generation) {
      const dt = Math.max(0.001, (now - last.t) / 1000);
      chart.push([
        Math.max(0, (sums.rill_produced_bytes_total - last.in) / dt),
        Math.max(0, (sums.rill_consumed_bytes_total - last.out) / dt),
      ]);
    }
    last = { t: now, in: sums.rill_produced_bytes_total, out: sums.rill_consumed_bytes_total };
  };
  await sample();
  every(2000, sample);
}

async function topics(main) {
  const all = await api('/v1/topics');
  main.replaceChildren(h('h1', {}, 'Topics'));
  if (!all.length) {
    main.appendChild(empty('No topics yet. Create one with ', h('code', {}, 'rill topic create NAME --partitions 3'), ' or let a producer create it.'));
    return;
  }
  main.appendChild(table('topics', [
    { k: 'name', label: 'Topic', render: (t) => h('span', {}, h('a', { href: `#/topics/${enc(t.name)}` }, t.name), t.internal ? ' ' : null, t.internal ? badge('internal', 'info') : null) },
    { k: 'partitions', label: 'Partitions', num: true },
    { k: 'replication_factor', label: 'Replication factor', num: true },
    { k: 'under_replicated', label: 'Under-replicated', num: true },
    { k: 'offline', label: 'Offline', num: true },
    { k: 'size_bytes', label: 'Size (leaders)', num: true, render: (t) => fmtBytes(t.size_bytes) },
  ], all, { rowKey: (t) => t.name, rowClass: (t) => (t.offline ? 'bad' : t.under_replicated ? 'warn' : null) }));
}

async function topic(main, name) {
  let t;
  try {
    t = await api(`/v1/topics/${enc(name)}`);
  } catch (e) {
    if (e.status === 404) {
      main.replaceChildren(h('h1', {}, name), empty(`Topic ${name} does not exist. `, h('a', { href: '#/topics' }, 'All topics')));
      return;
    }
    throw e;
  }
  const custom = t.configs.filter((c) => c.source !== 'broker default' && c.source !== 'default');
  main.replaceChildren(
    h('h1', {}, 'Topic ', h('span', { 'data-topic': t.topic }, t.topic)),
    h('div', { class: 'cards' },
      card('Partitions', fmtNum(t.partitions.length), '', 'partitions'),
      card('Records (high watermarks)', fmtNum(t.partitions.reduce((n, p) => n + (p.latest_offset || 0) - (p.earliest_offset || 0), 0)), '', 'records'),
      card('Size (leaders)', fmtBytes(t.partitions.reduce((n, p) => n + (p.size_bytes || 0), 0)), '', 'size'),
      card('Configs set on the topic', fmtNum(custom.length), '', 'custom_configs')),
    h('h2', {}, 'Partitions'),
    table('partitions', [
      { k: 'partition', label: 'Partition', num: true },
      { k: 'leader', label: 'Leader', num: true, render: (p) => (p.leader === null ? badge('offline', 'down') : p.leader) },
      { k: 'leader_epoch', label: 'Epoch', num: true },
      { k: 'replicas', label: 'Replicas', render: (p) => list(p.replicas) },
      { k: 'isr', label: 'In-sync replicas', render: (p) => list(p.isr) },
      { k: 'earliest_offset', label: 'Log start', num: true },
      { k: 'latest_offset', label: 'High watermark', num: true },
      { k: 'log_end_offset', label: 'Log end', num: true },
      { k: 'size_bytes', label: 'Size', num: true, render: (p) => fmtBytes(p.size_bytes) },
      { k: 'segments', label: 'Segments', num: true },
      { k: 'records', label: '', render: (p) => h('a', { href: `#/topics/${enc(t.topic)}/partitions/${p.partition}/records` }, 'records') },
    ], t.partitions, {
      rowKey: (p) => p.partition,
      rowClass: (p) => (p.leader === null ? 'bad' : p.isr.length < p.replicas.length ? 'warn' : null),
    }),
    h('h2', {}, 'Configs'),
    table('configs', [
      { k: 'name', label: 'Name' },
      { k: 'value', label: 'Value', data: true },
      { k: 'source', label: 'Source' },
    ], t.configs, { rowKey: (c) => c.name }),
  );
}

async function records(main, name, partition) {
  const form = h('form', { class: 'browse' });
  const from = h('select', { name: 'from' }, h('option', { value: 'offset' }, 'from offset'), h('option', { value: 'timestamp' }, 'from timestamp (ms)'), h('option', { value: 'end' }, 'the last records'));
  const at = h('input', { name: 'at', size: 16, placeholder: 'offset or timestamp' });
  const max = h('input', { name: 'max_records', size: 6, value: '50' });
  const encoding = h('select', { name: 'encoding' }, ['utf8', 'json', 'hex'].map((e) => h('option', { value: e }, e)));
  form.append(h('label', {}, 'Start', from), h('label', {}, 'At', at), h('label', {}, 'Max records', max), h('label', {}, 'Show as', encoding), h('button', { type: 'submit' }, 'Read'));
  const results = h('div', {});
  main.replaceChildren(
    h('h1', {}, 'Records of ', h('a', { href: `#/topics/${enc(name)}` }, name), ` partition ${partition}`),
    form,
    results,
  );
  const load = async (query) => {
    const slice = await api(`/v1/topics/${enc(name)}/partitions/${enc(partition)}/records?${query}`);
    const info = h('p', { class: 'muted', 'data-slice': true },
      `Offsets ${slice.start_offset} to ${Math.max(slice.start_offset, slice.next_offset - 1)} of a high watermark of ${slice.high_watermark}; at most ${slice.max_records} records and ${fmtBytes(slice.max_bytes)} per read.`);
    const nodes = [info];
    if (!slice.records.length) {
      nodes.push(empty(slice.high_watermark === 0 ? 'This partition has no records yet.' : 'No records from here up to the high watermark.'));
    } else {
      nodes.push(table('records', [
        { k: 'offset', label: 'Offset', num: true },
        { k: 'timestamp', label: 'Timestamp', render: (r) => fmtTime(r.timestamp) },
        { k: 'key', label: 'Key', data: true, render: (r) => (r.key === null ? '(null)' : r.key) },
        { k: 'value', label: 'Value', data: true, render: (r) => (r.value === null ? '(null)' : typeof r.value === 'string' ? r.value : JSON.stringify(r.value, null, 1)) },
        { k: 'encoding', label: 'Shown as', render: (r) => `${r.key_encoding} / ${r.value_encoding}` },
        { k: 'headers', label: 'Headers', data: true, render: (r) => (r.headers.length ? r.headers.map((x) => `${x.key}=${x.value}`).join('\n') : '') },
      ], slice.records, { rowKey: (r) => r.offset }));
    }
    if (slice.truncated) {
      nodes.push(h('p', {}, h('a', {
        href: '#',
        'data-next': slice.next_offset,
        onclick: (e) => {
          e.preventDefault();
          from.value = 'offset';
          at.value = String(slice.next_offset);
          form.requestSubmit();
        },
      }, `Next records from offset ${slice.next_offset} →`)));
    }
    results.replaceChildren(...nodes);
  };
  const query = () => {
    const q = new URLSearchParams();
    if (from.value === 'end') q.set('from', 'end');
    else if (at.value.trim() !== '') q.set(from.value, at.value.trim());
    if (max.value.trim() !== '') q.set('max_records', max.value.trim());
    q.set('encoding', encoding.value);
    return q.toString();
  };
  form.addEventListener('submit', (e) => {
    e.preventDefault();
    load(query()).catch((err) => results.replaceChildren(errorBox(err)));
  });
  try {
    await load(query());
  } catch (e) {
    if (e.status === 404) {
      results.replaceChildren(empty(`Topic ${name} has no partition ${partition}. `, h('a', { href: '#/topics' }, 'All topics')));
      return;
    }
    throw e;
  }
}

async function groups(main) {
  const all = await api('/v1/groups');
  main.replaceChildren(h('h1', {}, 'Consumer groups'));
  if (!all.length) {
    main.appendChild(empty('No consumer groups yet. A consumer that subscribes with a group id (', h('code', {}, 'rill consume TOPIC --group NAME'), ') or commits offsets creates one.'));
    return;
  }
  main.appendChild(table('groups', [
    { k: 'group', label: 'Group', render: (g) => h('a', { href: `#/groups/${enc(g.group)}` }, g.group) },
    { k: 'state', label: 'State' },
    { k: 'members', label: 'Members', num: true },
  ], all, { rowKey: (g) => g.group }));
}

async function group(main, name, mine) {
  const summary = h('div', {});
  const chart = new LiveChart('lag', ['total lag (records)'], fmtNum);
  main.replaceChildren(h('h1', {}, 'Consumer group ', h('span', { 'data-group': name }, name)), summary,
    h('h2', {}, 'Lag over time'), h('p', { class: 'muted' }, 'Total lag, sampled every 3 s while this page is open.'), chart.el);
  const draw = async (first) => {
    let lag;
    try {
      lag = await api(`/v1/groups/${enc(name)}`);
    } catch (e) {
      if (mine !== generation) return;
      if (e.status === 404) {
        summary.replaceChildren(empty(`Group ${name} does not exist (no members and no committed offsets). `, h('a', { href: '#/groups' }, 'All groups')));
        return;
      }
      if (first) throw e;
      summary.replaceChildren(errorBox(e), h('p', { class: 'muted' }, 'Retrying every 3 s.'));
      return;
    }
    if (mine !== generation) return;
    chart.push([lag.total_lag]);
    const g = lag.group;
    summary.replaceChildren(
      h('div', { class: 'cards' },
        card('State', g.state, '', 'state'),
        card('Members', fmtNum(g.members.length), '', 'members'),
        card('Assignor', g.assignor || '—', '', 'assignor'),
        card('Epoch', fmtNum(g.group_epoch), '', 'epoch'),
        card('Total lag', fmtNum(lag.total_lag), lag.total_lag ? 'bad' : 'ok', 'total_lag')),
      h('h2', {}, 'Members'),
      g.members.length
        ? table('members', [
          { k: 'member_id', label: 'Member', data: true },
          { k: 'instance_id', label: 'Instance' },
          { k: 'topics', label: 'Subscribed', render: (m) => list(m.topics) },
          { k: 'partitions', label: 'Assigned partitions', render: (m) => list(m.partitions.map(([t, p]) => `${t}-${p}`)) },
        ], g.members, { rowKey: (m) => m.member_id })
        : empty('No active members: the group only holds committed offsets.'),
      h('h2', {}, 'Lag by partition'),
      lag.partitions.length
        ? table('lag', [
          { k: 'topic', label: 'Topic', render: (p) => h('a', { href: `#/topics/${enc(p.topic)}` }, p.topic) },
          { k: 'partition', label: 'Partition', num: true },
          { k: 'committed', label: 'Committed', num: true },
          { k: 'log_end', label: 'High watermark', num: true },
          { k: 'lag', label: 'Lag', num: true },
          { k: 'member', label: 'Member', data: true },
        ], lag.partitions, { rowKey: (p) => `${p.topic}-${p.partition}`, rowClass: (p) => (p.lag ? 'warn' : null) })
        : empty('No partitions assigned or committed.'),
    );
  };
  await draw(true);
  every(3000, () => draw(false));
}

window.addEventListener('hashchange', route);
route();
