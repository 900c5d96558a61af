// <conversion-feed>: a convert form and the signed-in user's conversions as they happen, served
// by the conversions service (bff-web routes /ui/conversions/conversion-feed.js here). It knows
// nothing of the page's other components: it takes the page's one gateway connection from the
// client module, asks who is signed in, listens to `conversions.{user}` (every event once, in
// order, resumed after a reconnect) and sends `convert` mutations over the same socket.

import { connect } from '/v1/client.js';

const STYLE = `
  :host { display: block; font: 14px system-ui, sans-serif; border: 1px solid #cbd5e1;
          border-radius: 8px; padding: 12px 16px; background: #eff6ff; }
  h2 { font-size: 13px; text-transform: uppercase; color: #475569; margin: 0 0 8px; }
  form { display: flex; gap: 6px; margin-bottom: 8px; }
  input, select, button { font: inherit; padding: 3px 6px; }
  input { width: 7em; }
  ol { margin: 0; padding-left: 20px; max-height: 260px; overflow: auto; }
  li { font-variant-numeric: tabular-nums; }
  .notice { color: #b45309; font-size: 12px; }
  .error { color: #b91c1c; font-size: 12px; }
`;

const WHO = '{ dashboard(pairs: []) { user } }';
const CONVERT =
  'mutation Convert($from: String!, $to: String!, $amount: String!) ' +
  '{ convert(from: $from, to: $to, amount: $amount) { id } }';

class ConversionFeed extends HTMLElement {
  connectedCallback() {
    const root = this.shadowRoot ?? this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>${STYLE}</style><h2>Conversions</h2>
      <form>
        <input name="amount" value="100" inputmode="decimal" aria-label="amount">
        <select name="from" aria-label="from"><option>EUR</option><option>GBP</option><option>USD</option></select>
        <select name="to" aria-label="to"><option>USD</option><option>EUR</option><option>JPY</option></select>
        <button type="submit">Convert</button>
      </form>
      <div class="error"></div><div class="notice"></div><ol reversed></ol>`;
    this.conn = connect(this.getAttribute('gateway') ?? '/v1/graphql');
    this.alive = true;
    root.querySelector('form').addEventListener('submit', (e) => {
      e.preventDefault();
      this.convert(new FormData(e.target));
    });
    this.conn.request(WHO).then(
      ({ dashboard }) => {
        if (!this.alive) return;
        this.stop = this.conn.channel(`conversions.${dashboard.user}`, {
          next: (event) => this.add(event),
          lost: (info) => {
            root.querySelector('.notice').textContent =
              info.reason === 'history_gap'
                ? 'Some conversions could not be delivered: reload to see them all.'
                : 'Reconnected: conversions made meanwhile may be missing.';
            this.dataset.lost = info.reason;
          },
          error: (e) => this.showError(e),
        });
        this.dataset.state = 'live';
      },
      (e) => this.showError(e),
    );
  }

  disconnectedCallback() {
    this.alive = false;
    this.stop?.();
    this.stop = null;
  }

  add(event) {
    const c = event.data?.conversion;
    if (!c) return;
    const li = document.createElement('li');
    li.dataset.id = c.id;
    li.dataset.offset = event.offset;
    li.textContent = `${c.amount} ${c.from} → ${c.converted} ${c.to} @ ${c.rate}`;
    this.shadowRoot.querySelector('ol').prepend(li);
  }

  async convert(form) {
    const error = this.shadowRoot.querySelector('.error');
    error.textContent = '';
    try {
      await this.conn.request(CONVERT, {
        from: form.get('from'),
        to: form.get('to'),
        amount: String(form.get('amount')),
      });
    } catch (e) {
      this.showError(e);
    }
  }

  showError(e) {
    this.shadowRoot.querySelector('.error').textContent = e.message;
  }
}

if (!customElements.get('conversion-feed')) customElements.define('conversion-feed', ConversionFeed);
