// The dashboard's charts: uPlot (small, canvas, no DOM per point).
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { h } from './dom';

export interface Stats {
  range: string; step: number; times: number[];
  series: Record<string, number[]>; rejected_by_reason: Record<string, number>;
}

const COLORS: Record<string, string> = {
  accepted: '#2f81f7', delivered: '#2da44e', rejected: '#cf222e', quarantined: '#bf8700',
  deferred: '#8250df', bounced: '#57606a', spam: '#e16f24', virus: '#a40e26',
};

export function chart(title: string, stats: Stats, names: string[], width: number): HTMLElement {
  const box = h('figure', { class: 'chart', 'data-chart': title }, h('figcaption', {}, title));
  const data: uPlot.AlignedData = [stats.times, ...names.map(n => stats.series[n] || [])];
  const opts: uPlot.Options = {
    width: Math.max(320, width), height: 220,
    scales: { x: { time: true }, y: { range: (_u, _min, max) => [0, Math.max(1, max)] } },
    axes: [{}, { label: 'messages', size: 50 }],
    series: [{}, ...names.map(n => ({ label: n, stroke: COLORS[n] || '#333', width: 2,
                                      fill: (COLORS[n] || '#333') + '18', points: { show: false } }))],
    legend: { show: true },
  };
  const plot = new uPlot(opts, data, box);
  box.dataset.points = String(stats.times.length);
  (box as any).__plot = plot;
  return box;
}
