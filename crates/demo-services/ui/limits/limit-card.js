// <limit-card>: the signed-in user's remaining daily conversion limit, served by the limits
// service (bff-web routes /ui/limits/limit-card.js here). It knows nothing of the page's other
// components: it takes the page's one gateway connection from the client module, asks the
// gateway who is signed in and their limit (a query over the socket), and asks again whenever
// the user's `conversions.{user}` channel says a conversion happened — or that some may have
// been missed.

import { connect } from '/v1/client.js';

const STYLE = `
  :host { display: block; font: 14px system-ui, sans-serif; border: 1px solid #cbd5e1;
          border-radius: 8px; padding: 12px 16px; background: #f0fdf4; }
  h2 { font-size: 13px; text-transform: uppercase; color: #475569; margin: 0 0 8px; }
  .remaining { font-size: 28px; font-weight: 700; font-variant-numeric: tabular-nums; }
  .of { color: #64748b; }
  .error { color: #b91c1c; font-size: 12px; }
`;

const QUERY = '{ dashboard(pairs: []) { user limit { dailyLimit used remaining } } }';

class LimitCard extends HTMLElement {
  connectedCallback() {
    const root = this.shadowRoot ?? this.attachShadow({ mode: 'open' });
    root.innerHTML = `<style>${STYLE}</style><h2>Today's limit</h2>
      <div><span class="remaining">…</span> <span class="of"></span></div><div class="error"></div>`;
    this.conn = connect(this.getAttribute('gateway') ?? '/v1/graphql');
    this.alive = true;
    this.load().then((user) => {
      if (!user || !this.alive) return;
      this.stop = this.conn.channel(`conversions.${user}`, {
        next: () => this.load(),
        lost: () => this.load(),
        error: (e) => this.showError(e),
      });
    });
  }

  disconnectedCallback() {
    this.alive = false;
    this.stop?.();
    this.stop = null;
  }

  async load() {
    try {
      const { dashboard } = await this.conn.request(QUERY);
      const root = this.shadowRoot;
      if (dashboard.limit) {
        root.querySelector('.remaining').textContent = dashboard.limit.remaining;
        root.querySelector('.of').textContent = `left of ${dashboard.limit.dailyLimit}`;
        this.dataset.remaining = dashboard.limit.remaining;
        this.dataset.state = 'live';
        root.querySelector('.error').textContent = '';
      }
      return dashboard.user;
    } catch (e) {
      this.showError(e);
      return null;
    }
  }

  showError(e) {
    this.shadowRoot.querySelector('.error').textContent = e.message;
  }
}

if (!customElements.get('limit-card')) customElements.define('limit-card', LimitCard);
