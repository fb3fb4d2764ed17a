"""The report's page: its style, the script that draws the phase diagram and opens a clicked
cell, and the document around the sections ``grokjax.report`` fills."""

from __future__ import annotations

import html

# the first lines of every report: a file without it was not written by a report, and is never replaced
MARK = '<meta name="generator" content="grokjax report">'

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1280px; padding: 0 20px 40px; color: #222; }
header { border-bottom: 1px solid #ddd; margin-bottom: 10px; }
h1 { font-size: 22px; margin: 18px 0 4px; } h2 { font-size: 18px; margin: 26px 0 8px; }
h3 { font-size: 15px; margin: 4px 0; } nav a { margin-right: 14px; }
.row { display: flex; flex-wrap: wrap; gap: 16px; align-items: flex-start; }
#heatmap { flex: 1 1 480px; min-width: 380px; height: 440px; }
#cell { flex: 1 1 520px; min-width: 380px; } #curves { height: 320px; }
.hint { color: #666; margin: 2px 0 8px; }
table.data { border-collapse: collapse; font-size: 12.5px; margin: 6px 0; }
table.data th, table.data td { border: 1px solid #ddd; padding: 2px 7px; text-align: right; }
table.data th { background: #f4f4f4; } .scroll { max-height: 300px; overflow: auto; }
dl { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; } dt { color: #666; } dd { margin: 0; }
pre { background: #f7f7f7; padding: 8px; overflow: auto; font-size: 12.5px; }
figure { display: inline-block; margin: 8px 12px 8px 0; vertical-align: top; }
figure img { max-width: 100%; max-height: 460px; border: 1px solid #eee; } figcaption { color: #666; font-size: 12px; }
"""

SCRIPT = """
const D = JSON.parse(document.getElementById('grokjax-data').textContent);
const heat = document.getElementById('heatmap'), curves = document.getElementById('curves');
const PALETTE = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f',
                 '#bcbd22', '#17becf'];
const never = D.z.map((row, i) => row.map((v, j) => (v === null && D.text[i][j] ? 1 : null)));
// one trace per kind of cell, each labelling only its own cells (a label drawn twice blurs)
const only = z => D.text.map((row, i) => row.map((t, j) => (z[i][j] === null ? '' : t)));
const common = {x: D.xs, y: D.ys, texttemplate: '%{text}', customdata: D.hover, hoverongaps: false,
                hovertemplate: '%{customdata}<extra></extra>', xgap: 2, ygap: 2, type: 'heatmap'};
Plotly.newPlot(heat, [
  {...common, z: D.z, text: only(D.z), colorscale: 'Viridis', reversescale: true,
   colorbar: {title: {text: 'median<br>grok step'}}},
  {...common, z: never, text: only(never), colorscale: [[0, '#d4d4d4'], [1, '#d4d4d4']], showscale: false},
], {xaxis: {type: 'category', title: {text: D.x}}, yaxis: {type: 'category', title: {text: D.y}},
    plot_bgcolor: '#fff', margin: {t: 20, r: 10}, title: {text: ''}}, {displaylogo: false, responsive: true});

function fmt(v) {
  if (v === null || v === undefined) return '-';
  return typeof v === 'number' && !Number.isInteger(v) ? Number(v.toPrecision(4)).toString() : String(v);
}

function show(i, j) {
  const ids = D.cells[i + ',' + j];
  if (!ids) return;
  const where = (D.x ? D.x + ' = ' + D.xs[j] : 'all runs') + (D.y ? ', ' + D.y + ' = ' + D.ys[i] : '');
  document.getElementById('cell-title').textContent = where + ': ' + ids.length + ' runs';
  const traces = [];
  ids.forEach((id, k) => {
    const c = D.curves[id], color = PALETTE[k % PALETTE.length];
    if (!c) return;
    const label = 'run ' + id + D.columns.slice(1, 1 + D.varying)
      .map((n, m) => ' ' + n + '=' + fmt(D.runs[id][m + 1])).join('');
    traces.push({x: c.step, y: c.test_acc, name: label + ' test', legendgroup: String(id), mode: 'lines',
                 line: {color: color, width: 2}});
    traces.push({x: c.step, y: c.train_acc, name: label + ' train', legendgroup: String(id), mode: 'lines',
                 line: {color: color, width: 1.2, dash: 'dash'}});
  });
  Plotly.react(curves, traces, {xaxis: {title: {text: 'step'}},
      yaxis: {title: {text: 'accuracy (solid test, dashed train)'}, range: [0, 1.03]}, margin: {t: 10, r: 10},
      legend: {font: {size: 10}}}, {displaylogo: false, responsive: true});
  curves.dataset.cell = i + ',' + j;
  curves.dataset.runs = ids.join(',');
  const head = '<tr>' + D.columns.map(c => '<th>' + c + '</th>').join('') + '</tr>';
  const rows = ids.map(id => '<tr>' + D.runs[id].map(v => '<td>' + fmt(v) + '</td>').join('') + '</tr>').join('');
  document.getElementById('cell-runs').innerHTML = '<table class="data">' + head + rows + '</table>';
  Plotly.relayout(heat, {shapes: [{type: 'rect', xref: 'x', yref: 'y', x0: j - 0.5, x1: j + 0.5, y0: i - 0.5,
                                   y1: i + 0.5, line: {color: '#d62728', width: 3}}]});
}

heat.on('plotly_click', ev => {
  const p = ev.points[0];
  show(D.ys.indexOf(String(p.y)), D.xs.indexOf(String(p.x)));
});
show(D.start[0], D.start[1]);
"""


def page(title: str, description: str, sections: dict[str, str], data_json: str, plotly_js: str) -> str:
    """The HTML document: the interactive diagram, then ``sections`` (heading -> HTML) in order.

    Args:
      title, description: escaped text for the header.
      sections: heading -> the section's HTML.
      data_json: ``report.diagram_data`` as JSON safe in a script block.
      plotly_js: plotly.js's source, inlined.

    Returns:
      The document's text.
    """
    anchors = {name: name.lower().replace(" ", "-") for name in sections}
    nav = "".join(f"<a href='#{a}'>{html.escape(n)}</a>" for n, a in {"Phase diagram": "diagram", **anchors}.items())
    body = "".join(f"<section id='{anchors[n]}'><h2>{html.escape(n)}</h2>{s}</section>" for n, s in sections.items())
    return f"""<!DOCTYPE html>
<html lang="en"><head>{MARK}
<meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}: grokjax report</title><style>{STYLE}</style>
<script type="text/javascript">{plotly_js}</script></head>
<body><header><h1>{title}</h1><p>{description}</p><nav>{nav}</nav></header>
<section id="diagram"><h2>Phase diagram</h2>
<p class="hint">Median grok step per cell (grey: most runs never grokked), share of runs that grokked.
Hover a cell for its numbers; click it for its runs and their learning curves.</p>
<div class="row"><div id="heatmap"></div><div id="cell"><h3 id="cell-title"></h3><div id="curves"></div>
<div id="cell-runs" class="scroll"></div></div></div></section>
{body}
<script type="application/json" id="grokjax-data">{data_json}</script>
<script>{SCRIPT}</script>
</body></html>
"""
