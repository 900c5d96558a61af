// <fx-ticker pairs="EUR-USD GBP-USD">: live exchange rates, served by the exchange service
// (bff-web routes /ui/exchange/fx-ticker.js here). It knows nothing of the page's other
// components: it takes the page's one gateway connection from the client module and listens to
// the public `rates.{pair}` channels (state channels: the current rate at once, then each tick).

import { connect } from '/v1/client.js';

const STYLE = `
  :host { display: block; font: 14px system-ui, sans-serif; border: 1px solid #cbd5e1;
          border-radius: 8px; padding: 12px 16px; background: #f8fafc; }
  h2 { font-size: 13px; text-transform: uppercase; color: #475569; margin: 0 0 8px; }
  table { border-collapse: collapse; width: 100%; }
  td { padding: 3px 6px; font-variant-numeric: tabular-nums; }
  td.rate { font-weight: 600; text-align: right; }
  td.seq { color: #94a3b8; text-align: right; font-size: 12px; }
  .lost { color: #b45309; font-size: 12px; }
`;

class FxTicker extends HTMLElement {
  connectedCallback() {
    const root = this.shadowRoot ?? this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>${STYLE}</style><h2>Live rates</h2><table></table><div class="lost"></div>`;
    const table = root.querySelector('table');
    const pairs = (this.getAttribute('pairs') ?? 'EUR-USD GBP-USD USD-JPY').split(/\s+/).filter(Boolean);
    const conn = connect(this.getAttribute('gateway') ?? '/v1/graphql');
    this.stops = pairs.map((pair) => {
      const row = table.insertRow();
      row.dataset.pair = pair;
      row.innerHTML = `<td>${pair.replace('-', '/')}</td><td class="rate">…</td><td class="seq"></td>`;
      return conn.channel(`rates.${pair}`, {
        next: (event) => {
          row.cells[1].textContent = event.data.rate;
          row.cells[2].textContent = `#${event.data.seq}`;
          row.dataset.seq = String(event.data.seq);
          this.dataset.state = 'live';
        },
        lost: () => {
          // State channels deliver the current rate again after a reconnect: nothing to refetch.
        },
        error: (e) => {
          root.querySelector('.lost').textContent = `${pair}: ${e.message}`;
        },
      });
    });
  }

  disconnectedCallback() {
    for (const stop of this.stops ?? []) stop();
    this.stops = [];
  }
}

if (!customElements.get('fx-ticker')) customElements.define('fx-ticker', FxTicker);
