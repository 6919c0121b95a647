// 北方云 TV menu: driven by the remote control (arrows, OK, Back, digits). Plain ES2020, no build.
'use strict';

(() => {
  // ---- text ----------------------------------------------------------------------------

  const STR = {
    zh: {
      brand: '北方云智慧家庭', loading: '正在加载…',
      tab_home: '首页', tab_alerts: '预警', tab_services: '服务', tab_settings: '设置',
      rooms: '房间', other_room: '其他', n_devices: '{n} 个设备',
      no_devices: '还没有设备', no_devices_sub: '设备被发现并批准后会显示在这里。',
      room_empty: '这个房间没有设备',
      on: '开', off: '关', offline: '离线', online: '在线', standby: '待机',
      brightness: '亮度', volume: '音量', muted: '静音', channel: '频道', input: '信号源',
      color_temp: '色温', playing: '播放', power: '电源', power_w: '功率', energy: '用电量',
      temperature: '温度', humidity: '湿度', battery: '电量', illuminance: '光照', co: '一氧化碳',
      voltage: '电压', current: '电流', smoke: '烟雾', contact: '门窗', motion: '人体感应',
      is_playing: '播放中', paused: '已暂停', mute_on: '已静音', mute_off: '未静音',
      closed: '已关闭', opened: '已打开', motion_yes: '有人', motion_no: '无人',
      smoke_yes: '检测到烟雾', smoke_no: '正常',
      in_tv: '电视', in_hdmi1: 'HDMI 1', in_hdmi2: 'HDMI 2', in_av: 'AV',
      hint_adjust: '◀ ▶ 调节', hint_toggle: 'OK 切换', hint_channel: '数字键输入，OK 确认',
      hint_cycle: '◀ ▶ 切换', channel_typing: '按 OK 换台，返回取消',
      read_only: '这个设备只能查看状态，不能控制。',
      device_gone: '设备已被移除', status: '状态', maker: '品牌', model: '型号', updated: '更新时间',
      alert_level_1: '红色预警 · 特别重大', alert_level_2: '橙色预警 · 重大',
      alert_level_3: '黄色预警 · 较大', alert_level_4: '蓝色预警 · 一般',
      drill: '演练', ack: '确定', acked: '已确认', sender: '发布单位', sent: '发布时间', expires: '有效期至',
      no_alerts: '当前没有预警', no_alerts_sub: '有新的预警时，电视会立即显示。',
      history: '历史预警', no_history: '暂无历史记录',
      st_active: '生效中', st_expired: '已过期', st_cancelled: '已解除', st_acknowledged: '已确认',
      ack_done: '已确认收到预警', alert_ended: '这条预警已结束',
      no_services: '暂无服务', no_services_sub: '运营商提供的服务会显示在这里。', coming_soon: '该服务即将开放',
      k_shop: '购物', k_gov: '政务', k_info: '资讯', stock_out: '缺货', stock_left: '余 {n}',
      qty: '数量', total: '合计', confirm_order: '确认下单', cancel: '返回', ordering: '正在提交订单…',
      o_pending: '订单已保存，正在提交给运营商…', o_confirmed: '请用手机扫码支付', o_paid: '已付款，等待发货',
      o_shipped: '已发货', o_delivered: '已送达', o_cancelled: '订单已取消', o_rejected: '未能下单',
      o_price_changed: '价格有变化，请确认新价格', new_total: '新合计', reorder: '按新价格下单', order_no: '订单号',
      r_out_of_stock: '库存不足', r_no_delivery: '您所在地区暂不配送', r_unknown_item: '商品已下架',
      r_unknown_service: '该服务已下线', r_too_many: '超过限购数量',
      notices: '通知公告', queries: '查询', appointments: '预约', read_confirm: '我已阅读', read_done: '已阅读',
      submit: '查询', key_x: '输入 X', querying: '正在查询…', unavailable: '服务暂不可用，请稍后再试',
      invalid_fields: '输入有误，请检查', choose_slot: '选择时段', booking_pending: '正在预约…',
      b_booked: '预约成功', b_full: '该时段已约满', b_rejected: '无法预约', b_pending: '正在预约…',
      cap_left: '可约 {n} 人',
      gateway_id: '网关编号', region: '所在地区', household: '家庭编号', version: '软件版本', network: '网络地址',
      not_provisioned: '未开通', no_network: '未联网',
      pin_title: '配对码', pin_sub: '在手机或其他电视上输入配对码即可配对。',
      pin_expires: '{m} 分钟后更换', pin_expires_s: '{s} 秒后更换',
      pin_off: '配对码只显示在电视屏幕上：请在电视的“设置”里查看，或请安装人员在网关上运行 gateway pair。',
      language: '语言 Language',
      pair_title: '请输入配对码', pair_sub: '配对码显示在“设置”页面',
      pair_keys: '数字键输入 · ◀ 删除 · OK 确认 · 返回 取消', pair_wrong: '配对码不正确，请重新输入',
      pair_wait: '尝试次数过多，请 {s} 秒后再试', pair_ok: '配对成功', pair_skip: '返回键可跳过',
      reconnecting: '连接中断，正在重新连接…',
      key_move: '选择', key_ok: '确定', key_back: '上一级', key_enter: '进入', key_digits: '选择房间', key_channel: '输入频道',
      key_tabs: '切换页面', key_adjust: '调节',
      err_device_offline: '设备离线', err_timeout: '设备没有响应，请稍后再试',
      err_out_of_range: '数值超出范围', err_read_only: '这个功能不能调节',
      err_unsupported_capability: '设备不支持这个功能', err_not_controllable: '网关无法控制这个设备',
      err_unknown_device: '找不到这个设备', err_no_adapter: '网关暂时无法控制这类设备',
      err_network: '无法连接网关，请检查网络', err_generic: '操作没有成功，请稍后再试',
    },
    en: {
      brand: 'Beifang Smart Home', loading: 'Loading…',
      tab_home: 'Home', tab_alerts: 'Alerts', tab_services: 'Services', tab_settings: 'Settings',
      rooms: 'Rooms', other_room: 'Other', n_devices: '{n} devices',
      no_devices: 'No devices yet', no_devices_sub: 'Devices appear here once they are found and approved.',
      room_empty: 'No devices in this room',
      on: 'On', off: 'Off', offline: 'Offline', online: 'Online', standby: 'Standby',
      brightness: 'Brightness', volume: 'Volume', muted: 'Mute', channel: 'Channel', input: 'Input',
      color_temp: 'Colour', playing: 'Play', power: 'Power', power_w: 'Power', energy: 'Energy',
      temperature: 'Temperature', humidity: 'Humidity', battery: 'Battery', illuminance: 'Light', co: 'CO',
      voltage: 'Voltage', current: 'Current', smoke: 'Smoke', contact: 'Door', motion: 'Motion',
      is_playing: 'Playing', paused: 'Paused', mute_on: 'Muted', mute_off: 'Sound on',
      closed: 'Closed', opened: 'Open', motion_yes: 'Motion', motion_no: 'Clear',
      smoke_yes: 'Smoke detected', smoke_no: 'Normal',
      in_tv: 'TV', in_hdmi1: 'HDMI 1', in_hdmi2: 'HDMI 2', in_av: 'AV',
      hint_adjust: '◀ ▶ adjust', hint_toggle: 'OK to switch', hint_channel: 'Digits, then OK',
      hint_cycle: '◀ ▶ change', channel_typing: 'OK to tune, Back to cancel',
      read_only: 'This device reports its state; it cannot be controlled.',
      device_gone: 'The device was removed', status: 'Status', maker: 'Make', model: 'Model', updated: 'Updated',
      alert_level_1: 'Red · Level I, extremely serious', alert_level_2: 'Orange · Level II, serious',
      alert_level_3: 'Yellow · Level III, significant', alert_level_4: 'Blue · Level IV, general',
      drill: 'Drill', ack: 'OK', acked: 'Acknowledged', sender: 'From', sent: 'Issued', expires: 'Until',
      no_alerts: 'No active alerts', no_alerts_sub: 'New alerts appear on the TV at once.',
      history: 'Earlier alerts', no_history: 'No earlier alerts',
      st_active: 'Active', st_expired: 'Expired', st_cancelled: 'Cancelled', st_acknowledged: 'Acknowledged',
      ack_done: 'Alert acknowledged', alert_ended: 'This alert has ended',
      no_services: 'No services yet', no_services_sub: 'Services from your operator will appear here.',
      coming_soon: 'This service is coming soon',
      k_shop: 'Shopping', k_gov: 'Government', k_info: 'Information', stock_out: 'Sold out', stock_left: '{n} left',
      qty: 'Quantity', total: 'Total', confirm_order: 'Place order', cancel: 'Back', ordering: 'Placing the order…',
      o_pending: 'Order saved, sending it to your operator…', o_confirmed: 'Scan with your phone to pay',
      o_paid: 'Paid, waiting to ship', o_shipped: 'Shipped', o_delivered: 'Delivered', o_cancelled: 'Order cancelled',
      o_rejected: 'The order could not be placed', o_price_changed: 'The price has changed: please confirm',
      new_total: 'New total', reorder: 'Order at the new price', order_no: 'Order',
      r_out_of_stock: 'Not enough in stock', r_no_delivery: 'No delivery to your area yet',
      r_unknown_item: 'No longer sold', r_unknown_service: 'This service has closed', r_too_many: 'Over the limit per order',
      notices: 'Notices', queries: 'Look-ups', appointments: 'Appointments', read_confirm: 'I have read this',
      read_done: 'Read', submit: 'Look up', key_x: 'Type X', querying: 'Looking up…',
      unavailable: 'The service is unavailable; please try again later', invalid_fields: 'Please check what you typed',
      choose_slot: 'Choose a time', booking_pending: 'Booking…', b_booked: 'Booked', b_full: 'This time is full',
      b_rejected: 'Cannot be booked', b_pending: 'Booking…', cap_left: '{n} places',
      gateway_id: 'Gateway', region: 'Region', household: 'Household', version: 'Version', network: 'Network',
      not_provisioned: 'Not activated', no_network: 'Not connected',
      pin_title: 'Pairing code', pin_sub: 'Enter this code on a phone or another TV to pair it.',
      pin_expires: 'Changes in {m} min', pin_expires_s: 'Changes in {s} s',
      pin_off: 'The pairing code is shown on the TV screens only: open Settings on a TV, or ask your installer to run gateway pair on the gateway.',
      language: '语言 Language',
      pair_title: 'Enter the pairing code', pair_sub: 'Settings shows the code',
      pair_keys: 'Digits · ◀ delete · OK confirm · Back cancel', pair_wrong: 'Wrong code, please try again',
      pair_wait: 'Too many tries; try again in {s} s', pair_ok: 'Paired', pair_skip: 'Back to skip',
      reconnecting: 'Connection lost, reconnecting…',
      key_move: 'select', key_ok: 'confirm', key_back: 'back', key_enter: 'enter', key_digits: 'room', key_channel: 'channel',
      key_tabs: 'switch page', key_adjust: 'adjust',
      err_device_offline: 'The device is offline', err_timeout: 'The device did not respond; try again later',
      err_out_of_range: 'That value is out of range', err_read_only: 'This cannot be changed',
      err_unsupported_capability: 'The device cannot do that', err_not_controllable: 'The gateway cannot control this device',
      err_unknown_device: 'Device not found', err_no_adapter: 'The gateway cannot control this kind of device yet',
      err_network: 'Cannot reach the gateway; check the network', err_generic: 'That did not work; please try again',
    },
  };

  const REGIONS = {
    21: ['辽宁省', 'Liaoning'], 2101: ['沈阳市', 'Shenyang'], 2102: ['大连市', 'Dalian'], 2103: ['鞍山市', 'Anshan'],
    2104: ['抚顺市', 'Fushun'], 2105: ['本溪市', 'Benxi'], 2106: ['丹东市', 'Dandong'], 2107: ['锦州市', 'Jinzhou'],
    2108: ['营口市', 'Yingkou'], 2109: ['阜新市', 'Fuxin'], 2110: ['辽阳市', 'Liaoyang'], 2111: ['盘锦市', 'Panjin'],
    2112: ['铁岭市', 'Tieling'], 2113: ['朝阳市', 'Chaoyang'], 2114: ['葫芦岛市', 'Huludao'],
  };

  const ICONS = {
    tv: '<rect x="2.5" y="4" width="19" height="12.5" rx="2"/><path d="M8 20.5h8M12 16.5v4"/>',
    light: '<path d="M9 18h6M10 21h4M12 3a6 6 0 0 0-3.6 10.8c.7.6 1.1 1.4 1.1 2.2h5c0-.8.4-1.6 1.1-2.2A6 6 0 0 0 12 3z"/>',
    plug: '<path d="M9 2.5v5M15 2.5v5M6 7.5h12v3.5a6 6 0 0 1-12 0zM12 17v4.5"/>',
    speaker: '<rect x="5" y="2.5" width="14" height="19" rx="2.5"/><circle cx="12" cy="14.5" r="3.5"/><circle cx="12" cy="7" r="1"/>',
    sensor: '<path d="M14 14.5V5a2 2 0 0 0-4 0v9.5a4 4 0 1 0 4 0z"/><path d="M12 11v6"/>',
    door: '<path d="M6 21V3.5h12V21M3.5 21h17M14.5 12.5h.01"/>',
    motion: '<circle cx="13" cy="4.5" r="2"/><path d="M9 21l2.5-7 3 3v5M7 11.5l4-3.5 3 3 3.5 1"/>',
    smoke: '<circle cx="12" cy="12" r="8.5"/><circle cx="12" cy="12" r="3"/><path d="M12 3.5v2M12 18.5v2"/>',
    other: '<rect x="4" y="4" width="16" height="16" rx="3"/><circle cx="12" cy="12" r="2.5"/>',
  };

  const CONTROL_ORDER = ['on', 'brightness', 'color_temp', 'volume', 'muted', 'channel', 'input', 'playing'];
  const READOUT_ORDER = ['temperature', 'humidity', 'power', 'energy', 'voltage', 'current', 'illuminance',
    'co', 'smoke', 'contact', 'motion', 'battery', 'on', 'volume', 'muted', 'channel', 'input', 'playing',
    'brightness', 'color_temp'];
  const HIDDEN_CAPS = new Set(['overlay', 'say', 'ts']);
  const INPUTS = ['tv', 'hdmi1', 'hdmi2', 'av'];
  const STEP = { brightness: 10, volume: 5, color_temp: 500, channel: 1 };
  const LIMITS = { brightness: [0, 100], volume: [0, 100], color_temp: [2000, 6500], channel: [1, 9999] };
  const TABS = ['home', 'alerts', 'services', 'settings'];
  const FETCH_TIMEOUT_MS = 8000;
  const PENDING_MS = 6000;
  const ALERT_POLL_MS = 60000;

  // ---- state ---------------------------------------------------------------------------

  const store = window.localStorage;
  const S = {
    lang: store.getItem('bfy.lang') || '',
    token: store.getItem('bfy.token') || '',
    screen: 'home',
    zone: 'main',
    focus: '', // data-key of the focused element
    lastFocus: {}, // per screen: where the focus was in the content
    loaded: false,
    gateway: {},
    rooms: [], // [{name, ids}]
    devices: new Map(), // id -> DeviceView
    room: null, // the room whose devices are shown
    lastDeviceInRoom: {},
    deviceId: null,
    alerts: { active: [], history: [] },
    alertIndex: 0,
    viewing: null, // a history alert shown in the card
    seenAlerts: new Set(),
    dismissed: new Set(),
    returnTo: null,
    services: [],
    svc: null, // the open service: {def, view, ...}
    settings: null,
    pin: null, // {pin, expires_in_s, at} | {off: true}
    pending: new Map(), // `${id}|${cap}` -> {value, at}
    outbox: new Map(), // id -> values waiting to be sent
    inflight: new Set(),
    entry: '', // channel digits being typed
    dialog: null,
    connected: true,
    loadError: false,
    autoTabs: false, // the focus sits on the tabs only because the content had nothing to focus
  };

  const $ = (id) => document.getElementById(id);
  const tabOf = (screen) => (screen === 'device' ? 'home' : screen === 'service' ? 'services' : screen);
  const lang = () => (S.lang === 'en' ? 'en' : 'zh');
  const t = (key, vars) => {
    let s = STR[lang()][key] ?? STR.zh[key] ?? key;
    if (vars) for (const [k, v] of Object.entries(vars)) s = s.replace(`{${k}}`, String(v));
    return s;
  };
  const esc = (v) => String(v ?? '').replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
  const clamp = (v, lo, hi) => Math.min(hi, Math.max(lo, v));

  // ---- formatting ----------------------------------------------------------------------

  const num = (v, digits = 0) => {
    const n = Number(v);
    if (!Number.isFinite(n)) return '–';
    return digits ? n.toFixed(digits).replace(/\.0+$/, '') : String(Math.round(n));
  };

  function roomLabel(name) { return name || t('other_room'); }

  function value(dev, cap) {
    const p = S.pending.get(`${dev.info.id}|${cap}`);
    return p ? p.value : dev.state[cap];
  }

  function fmt(cap, v) {
    if (v === undefined || v === null) return '–';
    switch (cap) {
      case 'on': return v ? t('on') : t('off');
      case 'brightness': case 'humidity': case 'battery': return `${num(v)}%`;
      case 'volume': return num(v);
      case 'color_temp': return `${num(v)} K`;
      case 'temperature': return `${num(v, 1)} °C`;
      case 'power': return `${num(v, 1)} W`;
      case 'energy': return `${num(v, 2)} kWh`;
      case 'voltage': return `${num(v)} V`;
      case 'current': return `${num(v, 2)} A`;
      case 'illuminance': return `${num(v)} lx`;
      case 'co': return `${num(v)} ppm`;
      case 'muted': return v ? t('mute_on') : t('mute_off');
      case 'playing': return v ? t('is_playing') : t('paused');
      case 'contact': return v ? t('closed') : t('opened');
      case 'motion': return v ? t('motion_yes') : t('motion_no');
      case 'smoke': return v ? t('smoke_yes') : t('smoke_no');
      case 'input': return STR[lang()][`in_${v}`] || String(v).toUpperCase();
      case 'channel': return String(v);
      default: return typeof v === 'object' ? '' : String(v);
    }
  }

  function summary(dev) {
    if (!dev.online) return t('offline');
    const caps = new Set(dev.info.capabilities);
    const st = (c) => value(dev, c);
    const parts = [];
    const has = (c) => caps.has(c) && st(c) !== undefined && st(c) !== null;
    if (dev.info.kind === 'tv' && has('on') && !st('on')) return t('standby');
    if (has('on')) parts.push(fmt('on', st('on')));
    const on = !has('on') || st('on');
    if (on) {
      if (has('brightness')) parts.push(`${t('brightness')} ${fmt('brightness', st('brightness'))}`);
      if (has('channel')) parts.push(`${t('channel')} ${fmt('channel', st('channel'))}`);
      if (has('volume')) parts.push(has('muted') && st('muted') ? t('mute_on') : `${t('volume')} ${fmt('volume', st('volume'))}`);
    }
    for (const c of ['temperature', 'humidity', 'power', 'contact', 'motion', 'smoke', 'co', 'illuminance']) {
      if (has(c)) parts.push(fmt(c, st(c)));
    }
    if (has('battery') && st('battery') < 20) parts.push(`${t('battery')} ${fmt('battery', st('battery'))}`);
    return parts.join(' · ') || t('online');
  }

  function iconFor(dev) {
    const caps = dev.info.capabilities;
    let name = dev.info.kind;
    if (name === 'sensor') {
      if (caps.includes('contact')) name = 'door';
      else if (caps.includes('motion')) name = 'motion';
      else if (caps.includes('smoke') || caps.includes('co')) name = 'smoke';
    }
    if (name === 'switch') name = 'plug';
    return `<span class="icon" aria-hidden="true"><svg viewBox="0 0 24 24">${ICONS[name] || ICONS.other}</svg></span>`;
  }

  function timeText(iso) {
    if (!iso) return '';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    try {
      return new Intl.DateTimeFormat(lang() === 'en' ? 'en-GB' : 'zh-CN', {
        month: lang() === 'en' ? 'short' : 'long', day: 'numeric', hour: '2-digit', minute: '2-digit', hour12: false,
      }).format(d);
    } catch (e) {
      return d.toLocaleString();
    }
  }

  function regionText(code) {
    if (!code) return t('not_provisioned');
    const i = lang() === 'en' ? 1 : 0;
    const names = [];
    for (const len of [2, 4]) {
      const hit = code.length >= len && REGIONS[code.slice(0, len)];
      if (hit) names.push(hit[i]);
    }
    return names.length ? `${names.join(lang() === 'en' ? ', ' : ' ')} (${code})` : code;
  }

  // ---- network -------------------------------------------------------------------------

  async function api(method, path, body) {
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), FETCH_TIMEOUT_MS);
    const headers = { Accept: 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (S.token && method !== 'GET') headers.Authorization = `Bearer ${S.token}`;
    try {
      const r = await fetch(path, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body), signal: ctl.signal, cache: 'no-store',
      });
      let data = null;
      if (r.status !== 204) {
        try { data = await r.json(); } catch (e) { data = null; }
      }
      return { status: r.status, ok: r.ok, data, retryAfter: Number(r.headers.get('Retry-After')) || 0 };
    } catch (e) {
      return { status: 0, ok: false, data: null, retryAfter: 0 };
    } finally {
      clearTimeout(timer);
    }
  }

  function errorText(res) {
    if (res.status === 0) return t('err_network');
    const reason = res.data && res.data.detail && res.data.detail.reason;
    return (reason && STR[lang()][`err_${reason}`]) || t('err_generic');
  }

  function setHome(data) {
    S.gateway = data.gateway || {};
    S.devices.clear();
    S.rooms = [];
    for (const room of data.rooms) {
      S.rooms.push({ name: room.name, ids: room.devices.map((d) => d.info.id) });
      for (const d of room.devices) S.devices.set(d.info.id, d);
    }
    if (S.room === null || !S.rooms.some((r) => r.name === S.room)) S.room = S.rooms.length ? S.rooms[0].name : null;
  }

  function putDevice(dev) {
    const old = S.devices.get(dev.info.id);
    S.devices.set(dev.info.id, dev);
    for (const [key, p] of S.pending) {
      const [id, cap] = key.split('|');
      if (id === dev.info.id && dev.state[cap] === p.value) S.pending.delete(key);
    }
    if (!old || old.info.room !== dev.info.room || old.info.name !== dev.info.name) regroup();
  }

  function dropDevice(id) {
    S.devices.delete(id);
    regroup();
    if (S.screen === 'device' && S.deviceId === id) {
      toast(t('device_gone'));
      goHome();
    }
  }

  // Rooms in the server's order; a room that appears live goes before 其他.
  function regroup() {
    const order = S.rooms.map((r) => r.name);
    const byRoom = new Map();
    for (const d of S.devices.values()) {
      const name = (d.info.room || '').trim();
      if (!byRoom.has(name)) byRoom.set(name, []);
      byRoom.get(name).push(d.info.id);
    }
    const names = [...byRoom.keys()].sort((a, b) => {
      const ia = order.indexOf(a); const ib = order.indexOf(b);
      if (a === '' || b === '') return a === '' ? 1 : -1;
      if (ia >= 0 && ib >= 0) return ia - ib;
      if (ia >= 0 || ib >= 0) return ia >= 0 ? -1 : 1;
      return a.localeCompare(b, 'zh-CN');
    });
    S.rooms = names.map((name) => {
      const prev = (S.rooms.find((r) => r.name === name) || { ids: [] }).ids;
      const ids = byRoom.get(name).sort((a, b) => {
        const ia = prev.indexOf(a); const ib = prev.indexOf(b);
        return (ia < 0 ? 1e9 : ia) - (ib < 0 ? 1e9 : ib);
      });
      return { name, ids };
    });
    if (!S.rooms.some((r) => r.name === S.room)) S.room = S.rooms.length ? S.rooms[0].name : null;
  }

  async function loadAll() {
    const [home, alerts, services] = await Promise.all([
      api('GET', '/api/v1/home'), api('GET', '/api/v1/alerts'), api('GET', '/api/v1/services'),
    ]);
    if (home.ok) setHome(home.data);
    S.loadError = !home.ok;
    if (alerts.ok) setAlerts(alerts.data);
    if (services.ok) S.services = services.data;
    S.loaded = true;
    if (!S.lang) {
      const st = await api('GET', '/api/v1/settings');
      if (st.ok) {
        S.settings = st.data;
        if (!S.lang && String(st.data.language).toLowerCase().startsWith('en')) S.lang = 'en';
      }
      applyLang();
    }
    render();
    preemptIfNeeded();
  }

  async function loadAlerts() {
    const r = await api('GET', '/api/v1/alerts');
    if (r.ok) {
      setAlerts(r.data);
      render();
      preemptIfNeeded();
    }
  }

  function connect() {
    const es = new EventSource('/api/v1/stream');
    es.addEventListener('open', () => {
      S.connected = true;
      loadAll();
    });
    es.addEventListener('error', () => {
      S.connected = false;
      renderStatus();
      if (!S.loaded) loadAll(); // what there is, while the live stream retries
      if (es.readyState === EventSource.CLOSED) setTimeout(connect, 5000);
    });
    es.addEventListener('device', (e) => {
      putDevice(JSON.parse(e.data));
      scheduleRender();
    });
    es.addEventListener('removed', (e) => {
      dropDevice(JSON.parse(e.data).id);
      scheduleRender();
    });
    es.addEventListener('alert', (e) => {
      upsertAlert(JSON.parse(e.data));
      render();
      preemptIfNeeded();
      loadAlerts(); // and the history, as the alerts service now has it
    });
    es.addEventListener('alert_cleared', (e) => {
      const id = JSON.parse(e.data).id;
      S.alerts.active = S.alerts.active.filter((a) => a.id !== id);
      S.alertIndex = clamp(S.alertIndex, 0, Math.max(0, S.alerts.active.length - 1));
      // The alert that took over the screen is over: back to what the person was doing.
      if (S.screen === 'alerts' && S.returnTo && !S.alerts.active.some(isOpen)) leaveAlert();
      else render();
      loadAlerts();
    });
  }

  // ---- alerts --------------------------------------------------------------------------

  const isOpen = (a) => a.state === 'active' && !a.acknowledged;

  function sortAlerts(list) {
    return list.sort((a, b) => a.level - b.level || String(b.sent || '').localeCompare(String(a.sent || '')));
  }

  function setAlerts(data) {
    S.alerts = { active: sortAlerts(data.active.filter((a) => a.state === 'active')), history: data.history };
    S.alertIndex = clamp(S.alertIndex, 0, Math.max(0, S.alerts.active.length - 1));
  }

  function upsertAlert(alert) {
    const active = S.alerts.active.filter((a) => a.id !== alert.id);
    if (alert.state === 'active') active.push(alert);
    else S.alerts.history = [alert, ...S.alerts.history.filter((a) => a.id !== alert.id)];
    S.alerts.active = sortAlerts(active);
  }

  // A new, unacknowledged alert takes over the screen, whatever is open.
  function preemptIfNeeded() {
    const fresh = S.alerts.active.find((a) => isOpen(a) && !S.seenAlerts.has(a.id) && !S.dismissed.has(a.id));
    if (!fresh) return;
    S.seenAlerts.add(fresh.id);
    if (S.dialog && !S.dialog.forAlert) closeDialog(false);
    if (S.screen !== 'alerts') S.returnTo = { screen: S.screen, focus: S.focus, zone: S.zone };
    S.screen = 'alerts';
    S.viewing = null;
    S.alertIndex = Math.max(0, S.alerts.active.findIndex((a) => a.id === fresh.id));
    S.zone = 'main';
    S.focus = 'ack';
    S.entry = '';
    render();
  }

  function leaveAlert() {
    const back = S.returnTo;
    S.returnTo = null;
    if (back && back.screen !== 'alerts') {
      S.screen = back.screen;
      S.zone = back.zone;
      S.focus = back.focus;
      if (S.screen === 'device' && !S.devices.has(S.deviceId)) {
        goHome();
        return;
      }
      render();
    } else {
      goHome();
    }
  }

  async function acknowledge(alert) {
    const r = await api('POST', `/api/v1/alerts/${encodeURIComponent(alert.id)}/ack`);
    if (r.status === 204 || r.ok) {
      S.dismissed.add(alert.id);
      upsertAlert({ ...alert, acknowledged: true, state: 'acknowledged' });
      toast(t('ack_done'));
      await loadAlerts();
      leaveAlert();
    } else if (r.status === 401) {
      // Pairing must never stand between a person and an alert: Back skips it.
      openPairing(() => acknowledge(alert), () => { S.dismissed.add(alert.id); leaveAlert(); }, true);
    } else if (r.status === 404) {
      toast(t('alert_ended'));
      await loadAlerts();
      if (!S.alerts.active.length) leaveAlert();
    } else {
      toast(errorText(r), true);
    }
  }

  function alertText(a) {
    const want = lang() === 'en' ? 'en' : 'zh';
    const info = (a.infos || []).find((i) => String(i.language || '').toLowerCase().startsWith(want));
    const pick = (k) => (info && info[k]) || a[k] || '';
    return { headline: pick('headline') || pick('event'), description: pick('description'), instruction: pick('instruction') };
  }

  // ---- commands ------------------------------------------------------------------------

  function setValues(id, values) {
    const now = Date.now();
    for (const [cap, v] of Object.entries(values)) S.pending.set(`${id}|${cap}`, { value: v, at: now });
    S.outbox.set(id, { ...(S.outbox.get(id) || {}), ...values });
    render();
    flush(id);
  }

  // One request per device at a time; changes made meanwhile go together in the next one.
  async function flush(id) {
    if (S.inflight.has(id)) return;
    S.inflight.add(id);
    try {
      while (S.outbox.has(id)) {
        const values = S.outbox.get(id);
        S.outbox.delete(id);
        const r = await api('POST', `/api/v1/devices/${encodeURIComponent(id)}/command`, values);
        if (r.ok) continue;
        const caps = Object.keys(values);
        if (r.status === 401) {
          S.outbox.delete(id);
          openPairing(() => setValues(id, values), () => { clearPending(id, caps); render(); });
          return;
        }
        clearPending(id, caps);
        toast(errorText(r), true);
        render();
      }
    } finally {
      S.inflight.delete(id);
    }
  }

  function clearPending(id, caps) {
    for (const cap of caps) S.pending.delete(`${id}|${cap}`);
  }

  function expirePending() {
    const now = Date.now();
    let changed = false;
    for (const [key, p] of S.pending) {
      if (now - p.at > PENDING_MS) { S.pending.delete(key); changed = true; }
    }
    if (changed) render();
  }

  // ---- pairing dialog ------------------------------------------------------------------

  function openPairing(onDone, onCancel, forAlert = false) {
    if (S.dialog) return;
    S.token = '';
    store.removeItem('bfy.token');
    S.dialog = { digits: '', error: '', onDone, onCancel, forAlert, busy: false };
    renderDialog();
  }

  function closeDialog(cancelled) {
    const d = S.dialog;
    S.dialog = null;
    renderDialog();
    render();
    if (d && cancelled && d.onCancel) d.onCancel();
  }

  function clientName() {
    let name = store.getItem('bfy.name');
    if (!name) {
      const tag = Math.random().toString(36).slice(2, 6).toUpperCase();
      name = `电视菜单 ${tag}`;
      store.setItem('bfy.name', name);
    }
    return name;
  }

  async function submitPin() {
    const d = S.dialog;
    if (!d || d.busy || d.digits.length !== 6) return;
    d.busy = true;
    const r = await api('POST', '/api/v1/pair', { pin: d.digits, name: clientName() });
    d.busy = false;
    if (S.dialog !== d) return;
    if (r.ok && r.data && r.data.token) {
      S.token = r.data.token;
      store.setItem('bfy.token', S.token);
      S.dialog = null;
      renderDialog();
      toast(t('pair_ok'));
      render();
      if (d.onDone) d.onDone();
      return;
    }
    d.digits = '';
    d.error = r.status === 429 ? t('pair_wait', { s: r.retryAfter || 60 }) : r.status === 401 ? t('pair_wrong') : errorText(r);
    renderDialog();
  }

  function dialogKey(a) {
    const d = S.dialog;
    if (a.type === 'digit') {
      if (d.digits.length < 6) d.digits += a.digit;
      d.error = '';
      renderDialog();
      if (d.digits.length === 6) submitPin();
    } else if (a.type === 'left' || (a.type === 'backspace' && d.digits)) {
      d.digits = d.digits.slice(0, -1);
      renderDialog();
    } else if (a.type === 'ok') {
      submitPin();
    } else if (a.type === 'back' || a.type === 'backspace') {
      closeDialog(true);
    }
  }

  function renderDialog() {
    const box = $('dialog');
    const d = S.dialog;
    if (!d) {
      box.hidden = true;
      box.innerHTML = '';
      return;
    }
    const cells = [];
    for (let i = 0; i < 6; i++) {
      cells.push(`<span class="${i === d.digits.length ? 'next' : ''}">${esc(d.digits[i] || '')}</span>`);
    }
    box.innerHTML = `<div class="dialog-box">
      <h2 id="pair-title">${esc(t('pair_title'))}</h2>
      <p class="sub">${esc(t('pair_sub'))}</p>
      <div class="digits f is-focused" id="pin-digits" tabindex="-1" data-key="pin" aria-labelledby="pair-title">${cells.join('')}</div>
      <p class="err" id="pair-error">${esc(d.error)}</p>
      <p class="keys">${esc(t('pair_keys'))}${d.forAlert ? ` · ${esc(t('pair_skip'))}` : ''}</p>
    </div>`;
    box.hidden = false;
    // The dialog holds the one focus ring while it is open.
    for (const el of document.querySelectorAll('#screen .is-focused, #tabs .is-focused')) el.classList.remove('is-focused');
    $('pin-digits').focus({ preventScroll: true });
  }

  // ---- navigation ----------------------------------------------------------------------

  function goHome() {
    S.screen = 'home';
    S.zone = 'main';
    S.entry = '';
    S.focus = S.lastFocus.home || '';
    render();
  }

  function show(screen, zone = 'tabs') {
    if (S.zone === 'main' && S.focus) S.lastFocus[S.screen] = S.focus;
    if (S.screen === 'alerts' && screen !== 'alerts') S.returnTo = null;
    S.screen = screen;
    S.zone = zone;
    S.entry = '';
    S.viewing = null;
    S.focus = zone === 'tabs' ? `tab:${screen === 'device' ? 'home' : screen}` : S.lastFocus[screen] || '';
    if (screen === 'settings') loadSettings();
    if (screen === 'services') loadServices();
    render();
  }

  function openDevice(id) {
    S.lastFocus.home = `dev:${id}`;
    S.screen = 'device';
    S.deviceId = id;
    S.zone = 'main';
    S.entry = '';
    S.focus = '';
    render();
  }

  function focusables() {
    const scope = S.zone === 'tabs' ? $('tabs') : $('screen');
    return [...scope.querySelectorAll('.f')].filter((el) => el.offsetParent !== null);
  }

  function byKey(key) {
    for (const el of document.querySelectorAll('#tabs .f, #screen .f')) if (el.dataset.key === key) return el;
    return null;
  }

  function setFocus(key) {
    if (!key) return;
    if (key.startsWith('tab:')) S.zone = 'tabs';
    else {
      S.zone = 'main';
      S.lastFocus[S.screen] = key;
    }
    const changedRoom = key.startsWith('room:') && key.slice(5) !== S.room;
    if (key.startsWith('room:')) S.room = key.slice(5);
    if (key.startsWith('dev:') && S.room !== null) S.lastDeviceInRoom[S.room] = key;
    S.focus = key;
    if (changedRoom) render();
    else paintFocus();
  }

  function paintFocus() {
    if (S.dialog) return;
    // Focus parked on the tabs only because the content had nothing to focus yet moves in.
    if (S.autoTabs && S.zone === 'tabs' && [...$('screen').querySelectorAll('.f')].length) {
      S.zone = 'main';
      S.focus = S.lastFocus[S.screen] || '';
      S.autoTabs = false;
    }
    let el = byKey(S.focus);
    if (!el || (S.zone === 'tabs') !== el.dataset.key.startsWith('tab:')) {
      const all = focusables();
      el = (S.zone === 'main' && all.find((x) => x.dataset.default)) || all[0] || null;
      if (!el) {
        S.zone = 'tabs';
        S.autoTabs = true;
        el = byKey(`tab:${tabOf(S.screen)}`);
      }
      if (!el) return;
      S.focus = el.dataset.key;
      if (S.focus.startsWith('room:') && S.focus.slice(5) !== S.room) {
        S.room = S.focus.slice(5);
        render();
        return;
      }
    }
    for (const other of document.querySelectorAll('.is-focused')) if (other !== el) other.classList.remove('is-focused');
    el.classList.add('is-focused');
    el.focus({ preventScroll: true });
    el.scrollIntoView({ block: 'nearest', inline: 'nearest' });
    markOverflow();
    renderHints();
  }

  function markOverflow() {
    for (const el of $('screen').querySelectorAll('.scroll')) {
      el.classList.toggle('more', el.scrollTop + el.clientHeight < el.scrollHeight - 1);
    }
  }

  // The nearest focusable element in a direction (same row/column first).
  function spatial(dir) {
    const cur = byKey(S.focus);
    if (!cur) return null;
    const a = cur.getBoundingClientRect();
    let best = null;
    let bestScore = Infinity;
    for (const el of focusables()) {
      if (el === cur) continue;
      const b = el.getBoundingClientRect();
      let main; let cross; let overlap;
      if (dir === 'down') { main = b.top - a.bottom; cross = Math.abs((b.left + b.right) / 2 - (a.left + a.right) / 2); overlap = b.left < a.right && b.right > a.left; }
      if (dir === 'up') { main = a.top - b.bottom; cross = Math.abs((b.left + b.right) / 2 - (a.left + a.right) / 2); overlap = b.left < a.right && b.right > a.left; }
      if (dir === 'right') { main = b.left - a.right; cross = Math.abs((b.top + b.bottom) / 2 - (a.top + a.bottom) / 2); overlap = b.top < a.bottom && b.bottom > a.top; }
      if (dir === 'left') { main = a.left - b.right; cross = Math.abs((b.top + b.bottom) / 2 - (a.top + a.bottom) / 2); overlap = b.top < a.bottom && b.bottom > a.top; }
      if (main < -2) continue;
      if ((dir === 'up' || dir === 'down') && !overlap) continue;
      const score = (overlap ? 0 : 1e6) + Math.max(0, main) + cross * 2;
      if (score < bestScore) { bestScore = score; best = el; }
    }
    return best;
  }

  function move(dir) {
    const next = spatial(dir);
    if (next) {
      setFocus(next.dataset.key);
    } else if (dir === 'up' && S.zone === 'main') {
      setFocus(`tab:${tabOf(S.screen)}`);
    }
  }

  function jumpToRoom(n) {
    const room = S.rooms[n === 0 ? 9 : n - 1];
    if (!room) return;
    S.screen = 'home';
    setFocus(`room:${room.name}`);
    render();
  }

  // ---- keys ----------------------------------------------------------------------------

  function action(e) {
    if (e.ctrlKey || e.altKey || e.metaKey) return null;
    const k = e.key;
    const c = e.keyCode;
    if (k === 'ArrowUp' || k === 'Up' || c === 38) return { type: 'up' };
    if (k === 'ArrowDown' || k === 'Down' || c === 40) return { type: 'down' };
    if (k === 'ArrowLeft' || k === 'Left' || c === 37) return { type: 'left' };
    if (k === 'ArrowRight' || k === 'Right' || c === 39) return { type: 'right' };
    if (k === 'Enter' || k === 'Select' || k === 'Accept' || c === 13) return { type: 'ok' };
    if (k === 'Backspace' || c === 8) return { type: 'backspace' };
    if (k === 'Escape' || k === 'GoBack' || k === 'BrowserBack' || c === 27 || c === 461 || c === 10009) return { type: 'back' };
    if (k === 'ChannelUp' || k === 'PageUp' || c === 427 || c === 33) return { type: 'chup' };
    if (k === 'ChannelDown' || k === 'PageDown' || c === 428 || c === 34) return { type: 'chdown' };
    if (/^[0-9]$/.test(k)) return { type: 'digit', digit: k };
    if (c >= 96 && c <= 105) return { type: 'digit', digit: String(c - 96) };
    if (c >= 48 && c <= 57) return { type: 'digit', digit: String(c - 48) };
    if (k === 'Tab') return { type: 'none' };
    return null;
  }

  function onKey(e) {
    const a = action(e);
    if (!a) return;
    e.preventDefault();
    if (a.type === 'none') return;
    S.autoTabs = false;
    if (S.dialog) {
      dialogKey(a);
      return;
    }
    const typing = S.entry || (S.screen === 'service' && S.focus.startsWith('fld:'));
    if (a.type === 'backspace') a.type = typing ? 'backspace' : 'back';
    handle(a);
  }

  function handle(a) {
    const key = S.focus || '';
    const dev = S.screen === 'device' ? S.devices.get(S.deviceId) : null;

    if (a.type === 'digit') {
      if (S.screen === 'service') return serviceDigit(a.digit);
      if (S.screen === 'home') return jumpToRoom(Number(a.digit));
      if (dev && canSet(dev, 'channel')) {
        if (S.entry.length < 4) S.entry += a.digit;
        setFocus('ctl:channel');
        return render();
      }
      return undefined;
    }
    if (S.entry && dev) {
      if (a.type === 'ok') {
        const ch = clamp(Number(S.entry), LIMITS.channel[0], LIMITS.channel[1]);
        S.entry = '';
        return setValues(dev.info.id, { channel: ch });
      }
      if (a.type === 'backspace') { S.entry = S.entry.slice(0, -1); return render(); }
      if (a.type === 'back') { S.entry = ''; return render(); }
      S.entry = '';
      render();
    }
    if ((a.type === 'chup' || a.type === 'chdown') && dev && canSet(dev, 'channel')) {
      return step(dev, 'channel', a.type === 'chup' ? 1 : -1);
    }

    if (key.startsWith('tab:')) return tabKey(a, key.slice(4));
    if (S.screen === 'home') return homeKey(a, key);
    if (S.screen === 'device') return deviceKey(a, key, dev);
    if (S.screen === 'alerts') return alertsKey(a, key);
    if (S.screen === 'settings' && key.startsWith('lang:') && a.type === 'ok') return setLang(key.slice(5));
    if (S.screen === 'services' && key.startsWith('svc:') && a.type === 'ok') return openService(key.slice(4));
    if (S.screen === 'service') return serviceKey(a, key);
    if (a.type === 'back') return goHome();
    if (['up', 'down', 'left', 'right'].includes(a.type)) return move(a.type);
    return undefined;
  }

  function tabKey(a, tab) {
    const i = TABS.indexOf(tab);
    if (a.type === 'left' || a.type === 'right') {
      const next = TABS[clamp(i + (a.type === 'left' ? -1 : 1), 0, TABS.length - 1)];
      if (next !== tab) show(next, 'tabs');
      return undefined;
    }
    if (a.type === 'down' || a.type === 'ok') {
      if (S.screen === 'device' && tab === 'home') { S.zone = 'main'; S.focus = S.lastFocus.device || ''; return render(); }
      if (S.screen === 'service' && tab === 'services') { S.zone = 'main'; S.focus = S.lastFocus.service || ''; return render(); }
      if (S.screen !== tab) show(tab, 'tabs');
      S.zone = 'main';
      S.focus = S.lastFocus[S.screen] || '';
      paintFocus();
      return undefined;
    }
    if (a.type === 'back') {
      if (S.screen === 'alerts' && S.returnTo) return leaveAlert();
      if (S.screen === 'service') return serviceBack();
      if (S.screen !== 'home') return goHome();
    }
    return undefined;
  }

  function homeKey(a, key) {
    if (key.startsWith('room:')) {
      if (a.type === 'right' || a.type === 'ok') {
        const room = S.rooms.find((r) => r.name === S.room);
        if (room && room.ids.length) setFocus(S.lastDeviceInRoom[S.room] && byKey(S.lastDeviceInRoom[S.room]) ? S.lastDeviceInRoom[S.room] : `dev:${room.ids[0]}`);
        return undefined;
      }
      if (a.type === 'back' || a.type === 'left') return undefined; // Home is the top: nothing above it.
    }
    if (key.startsWith('dev:')) {
      if (a.type === 'ok') return openDevice(key.slice(4));
      if (a.type === 'left' || a.type === 'back') return setFocus(`room:${S.room}`);
    }
    if (['up', 'down', 'left', 'right'].includes(a.type)) return move(a.type);
    return undefined;
  }

  function canSet(dev, cap) {
    return dev.info.controllable && dev.info.settable.includes(cap);
  }

  function limits(dev, cap) {
    const r = dev.info.ranges && dev.info.ranges[cap];
    return r ? [Number(r[0]), Number(r[1])] : LIMITS[cap];
  }

  function step(dev, cap, dir) {
    const [lo, hi] = limits(dev, cap);
    const cur = Number(value(dev, cap));
    const base = Number.isFinite(cur) ? cur : lo;
    const stepSize = STEP[cap];
    // Land on the step grid (40 → 50, 43 → 50) so values stay round.
    let next = dir > 0 ? Math.floor(base / stepSize) * stepSize + stepSize : Math.ceil(base / stepSize) * stepSize - stepSize;
    if (cap === 'channel') next = base + dir;
    next = clamp(next, lo, hi);
    if (next !== cur) setValues(dev.info.id, { [cap]: next });
  }

  function deviceKey(a, key, dev) {
    if (a.type === 'back') return goHome();
    if (!dev) return undefined;
    const cap = key.startsWith('ctl:') ? key.slice(4) : '';
    const id = dev.info.id;
    if (cap && (a.type === 'left' || a.type === 'right')) {
      const dir = a.type === 'left' ? -1 : 1;
      if (cap in STEP) return step(dev, cap, dir);
      if (cap === 'input') return cycleInput(dev, dir);
      if (['on', 'muted', 'playing'].includes(cap)) {
        // → switches on, ← off; pressing towards where it already is does nothing.
        return value(dev, cap) === (dir > 0) ? undefined : setValues(id, { [cap]: dir > 0 });
      }
      return undefined;
    }
    if (cap && a.type === 'ok') {
      if (['on', 'muted', 'playing'].includes(cap)) return setValues(id, { [cap]: !value(dev, cap) });
      if (cap === 'input') return cycleInput(dev, 1);
      return undefined;
    }
    if (a.type === 'up' || a.type === 'down') return move(a.type);
    return undefined;
  }

  function cycleInput(dev, dir) {
    const cur = value(dev, 'input');
    const list = INPUTS.includes(cur) || cur === undefined ? INPUTS : [...INPUTS, cur];
    const i = list.indexOf(cur);
    const next = list[(Math.max(0, i) + dir + list.length) % list.length];
    setValues(dev.info.id, { input: next });
  }

  function alertsKey(a, key) {
    if (a.type === 'back') {
      if (S.viewing) { S.viewing = null; return render(); }
      return leaveAlert();
    }
    if (key === 'ack' && a.type === 'ok') {
      const alert = S.alerts.active[S.alertIndex];
      if (alert && !alert.acknowledged) acknowledge(alert);
      return undefined;
    }
    if (key === 'ack' && (a.type === 'left' || a.type === 'right') && S.alerts.active.length > 1) {
      S.alertIndex = (S.alertIndex + (a.type === 'left' ? -1 : 1) + S.alerts.active.length) % S.alerts.active.length;
      return render();
    }
    if (key.startsWith('hist:') && a.type === 'ok') {
      S.viewing = key.slice(5);
      return render();
    }
    if (['up', 'down', 'left', 'right'].includes(a.type)) return move(a.type);
    return undefined;
  }

  function setLang(l) {
    S.lang = l === 'en' ? 'en' : 'zh';
    store.setItem('bfy.lang', S.lang);
    applyLang();
    render();
  }

  function applyLang() {
    document.documentElement.lang = lang() === 'en' ? 'en' : 'zh-CN';
    document.title = t('brand');
    $('brand').textContent = t('brand');
  }

  // ---- rendering -----------------------------------------------------------------------

  let frame = 0;
  function scheduleRender() {
    if (!frame) frame = requestAnimationFrame(() => { frame = 0; render(); });
  }

  function render() {
    if (frame) { cancelAnimationFrame(frame); frame = 0; }
    renderTabs();
    renderStatus();
    const screen = $('screen');
    const scrolls = {};
    for (const el of screen.querySelectorAll('[data-scroll]')) scrolls[el.dataset.scroll] = el.scrollTop;
    let html = '';
    if (!S.loaded) html = `<p class="loading">${esc(t('loading'))}</p>`;
    else if (S.screen === 'home') html = renderHome();
    else if (S.screen === 'device') html = renderDevice();
    else if (S.screen === 'alerts') html = renderAlerts();
    else if (S.screen === 'services') html = renderServices();
    else if (S.screen === 'service') html = renderService();
    else if (S.screen === 'settings') html = renderSettings();
    screen.innerHTML = html;
    screen.dataset.screen = S.screen;
    for (const el of screen.querySelectorAll('[data-pct]')) el.style.width = `${el.dataset.pct}%`;
    for (const el of screen.querySelectorAll('[data-scroll]')) el.scrollTop = scrolls[el.dataset.scroll] || 0;
    fitAlert();
    paintFocus();
  }

  function renderTabs() {
    const current = S.screen === 'device' ? 'home' : S.screen === 'service' ? 'services' : S.screen;
    const open = S.alerts.active.filter(isOpen).length;
    $('tabs').innerHTML = TABS.map((tab) => {
      const badge = tab === 'alerts' && open ? `<span class="badge">${open}</span>` : '';
      const cls = `tab f${tab === current ? ' active' : ''}`;
      return `<button class="${cls}" role="tab" tabindex="-1" data-key="tab:${tab}" aria-selected="${tab === current}">${esc(t(`tab_${tab}`))}${badge}</button>`;
    }).join('');
  }

  function renderStatus() {
    const conn = $('conn');
    conn.hidden = S.connected;
    conn.textContent = S.connected ? '' : `● ${t('reconnecting')}`;
  }

  function renderHints() {
    const keys = [];
    const k = (cap, what) => keys.push(`<span><kbd>${esc(cap)}</kbd>${esc(what)}</span>`);
    if (S.zone === 'tabs') {
      k('◀ ▶', t('key_tabs'));
      k('▼', t('key_enter'));
    } else {
      k('▲ ▼ ◀ ▶', S.screen === 'device' ? `${t('key_move')} / ${t('key_adjust')}` : t('key_move'));
      k('OK', t('key_ok'));
    }
    if (S.screen === 'home') k('1–9', t('key_digits'));
    const dev = S.screen === 'device' && S.devices.get(S.deviceId);
    if (dev && canSet(dev, 'channel')) k('0–9', t('key_channel'));
    if (!(S.screen === 'home' && S.zone === 'main' && S.focus.startsWith('room:')) && !(S.screen === 'home' && S.zone === 'tabs')) {
      k(lang() === 'en' ? 'Back' : '返回', t('key_back'));
    }
    $('hints').innerHTML = keys.join('');
  }

  function renderHome() {
    if (S.loadError && !S.rooms.length) {
      return `<div class="empty"><strong>${esc(t('err_network'))}</strong></div>`;
    }
    if (!S.rooms.length) {
      return `<div class="empty"><strong>${esc(t('no_devices'))}</strong>${esc(t('no_devices_sub'))}</div>`;
    }
    const rooms = S.rooms.map((r, i) => {
      const sel = r.name === S.room ? ' selected' : '';
      const n = i < 10 ? `<span class="num">${(i + 1) % 10}</span>` : '<span class="num"></span>';
      return `<li><button class="room f${sel}" tabindex="-1" data-key="room:${esc(r.name)}"${i === 0 ? ' data-default="1"' : ''}>${n}<span class="rname">${esc(roomLabel(r.name))}</span><span class="count">${r.ids.length}</span></button></li>`;
    }).join('');
    const room = S.rooms.find((r) => r.name === S.room) || S.rooms[0];
    const devices = room.ids.map((id) => S.devices.get(id)).filter(Boolean).map((d) => {
      const on = d.info.capabilities.includes('on') && d.online ? value(d, 'on') : null;
      const pill = !d.online ? `<span class="pill offline">${esc(t('offline'))}</span>`
        : on === true ? `<span class="pill on">${esc(t('on'))}</span>`
          : on === false ? `<span class="pill">${esc(t('off'))}</span>` : '';
      return `<li><button class="device f${d.online ? '' : ' offline'}" tabindex="-1" data-key="dev:${esc(d.info.id)}">${iconFor(d)}<span class="body"><span class="name">${esc(d.info.name)}</span><span class="summary">${esc(summary(d))}</span></span>${pill}</button></li>`;
    }).join('');
    return `<div class="home">
      <section><h2 class="col-title">${esc(t('rooms'))}</h2><ul class="list scroll" data-scroll="rooms">${rooms}</ul></section>
      <section><h2 class="col-title" id="room-title">${esc(roomLabel(room.name))} · ${esc(t('n_devices', { n: room.ids.length }))}</h2>
        <ul class="list scroll" data-scroll="devices">${devices || `<li class="empty">${esc(t('room_empty'))}</li>`}</ul></section>
    </div>`;
  }

  function bar(v, lo, hi, text, pending) {
    const pct = clamp(((Number(v) - lo) / (hi - lo)) * 100, 0, 100) || 0;
    // Widths are set after rendering (the page's CSP allows no inline style attributes).
    return `<span class="bar"><span class="track"><span class="fill" data-pct="${pct.toFixed(0)}"></span></span><span class="val${pending ? ' pending' : ''}">${esc(text)}</span></span>`;
  }

  function controlRow(dev, cap) {
    const v = value(dev, cap);
    const pending = S.pending.has(`${dev.info.id}|${cap}`);
    let widget = '';
    let hint = '';
    if (cap === 'on' || cap === 'muted' || cap === 'playing') {
      widget = `<span class="switch${v ? ' on' : ''}"></span><span class="${pending ? 'pending' : ''}">${esc(fmt(cap, v))}</span>`;
      hint = t('hint_toggle');
    } else if (cap === 'brightness' || cap === 'volume' || cap === 'color_temp') {
      const [lo, hi] = limits(dev, cap);
      widget = bar(v, lo, hi, fmt(cap, v), pending);
      hint = t('hint_adjust');
    } else if (cap === 'channel') {
      widget = S.entry
        ? `<span class="entry" id="channel-entry">${esc(S.entry)}<span class="cursor"></span></span>`
        : `<span class="${pending ? 'pending' : ''}">${esc(fmt(cap, v))}</span>`;
      hint = S.entry ? t('channel_typing') : t('hint_channel');
    } else if (cap === 'input') {
      widget = `<span class="${pending ? 'pending' : ''}">◀ ${esc(fmt(cap, v))} ▶</span>`;
      hint = t('hint_cycle');
    }
    const label = cap === 'on' ? t('power') : t(cap);
    return `<div class="ctl f" tabindex="-1" data-key="ctl:${cap}" data-cap="${cap}"${cap === CONTROL_ORDER.find((c) => canSet(dev, c)) ? ' data-default="1"' : ''}>
      <span class="ctl-label">${esc(label)}</span><span class="ctl-value">${widget}</span><span class="ctl-hint">${esc(hint)}</span></div>`;
  }

  function renderDevice() {
    const dev = S.devices.get(S.deviceId);
    if (!dev) return `<div class="empty"><strong>${esc(t('device_gone'))}</strong></div>`;
    // Shown offline too: the availability may be stale, and the gateway's answer says why not.
    const controls = CONTROL_ORDER.filter((c) => canSet(dev, c));
    const settableShown = new Set(controls);
    const readCaps = READOUT_ORDER.filter((c) => dev.info.capabilities.includes(c) && !settableShown.has(c)
      && !HIDDEN_CAPS.has(c) && dev.state[c] !== undefined && dev.state[c] !== null && typeof dev.state[c] !== 'object');
    const noControls = !controls.length;
    // A device with nothing to control still holds the focus ring: on its values.
    const readouts = readCaps.map((c, i) => {
      const alarm = (c === 'smoke' && dev.state[c]) || (c === 'co' && dev.state[c] > 50);
      const label = c === 'power' ? t('power_w') : t(c);
      const focus = noControls ? ` f" tabindex="-1" data-key="ro:${c}"${i === 0 ? ' data-default="1"' : ''}` : '"';
      return `<div class="readout${focus}><div class="k">${esc(label)}</div><div class="v${alarm ? ' alarm' : ''}" data-cap="${c}">${esc(fmt(c, dev.state[c]))}</div></div>`;
    }).join('');
    const status = dev.online ? `<span class="pill on">${esc(t('online'))}</span>` : `<span class="pill offline">${esc(t('offline'))}</span>`;
    const note = !dev.online ? `<p class="note warn" id="device-note">${esc(t('err_device_offline'))}</p>`
      : noControls ? `<p class="note" id="device-note">${esc(t('read_only'))}</p>` : '';
    return `<div class="dev-screen">
      <div class="dev-head">${iconFor(dev)}<h1 id="device-title">${esc(roomLabel(dev.info.room))} · ${esc(dev.info.name)}</h1>${status}</div>
      <div class="dev-body${noControls ? ' readonly' : ''}">
        ${noControls ? '' : `<section class="controls scroll" data-scroll="controls">${controls.map((c) => controlRow(dev, c)).join('')}</section>`}
        <section>${readouts ? `<div class="readouts">${readouts}</div>` : ''}${note}${about(dev)}</section>
      </div></div>`;
  }

  function about(dev) {
    const rows = [
      [t('maker'), dev.info.manufacturer], [t('model'), dev.info.model],
      [t('updated'), dev.last_seen ? timeText(dev.last_seen) : ''],
    ].filter(([, v]) => v);
    if (!rows.length) return '';
    return `<dl class="about">${rows.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join('')}</dl>`;
  }

  // A long alert is set smaller, step by step, rather than cut off.
  function fitAlert() {
    const body = document.querySelector('#alert-card .alert-body');
    if (!body) return;
    const card = body.parentElement;
    for (const step of [1, 2, 3]) {
      if (body.scrollHeight <= body.clientHeight + 1) return;
      card.classList.remove(`fit-${step - 1}`);
      card.classList.add(`fit-${step}`);
    }
  }

  function levelName(level) { return t(`alert_level_${clamp(Number(level) || 4, 1, 4)}`); }

  function renderAlertCard(alert, index, total) {
    const text = alertText(alert);
    const lvl = clamp(Number(alert.level) || 4, 1, 4);
    const drill = alert.drill || (alert.status && alert.status !== 'Actual') ? `<span class="tag">${esc(t('drill'))}</span>` : '';
    const seq = total > 1 ? `<span class="seq">◀ ${index + 1}/${total} ▶</span>` : '';
    const colon = lang() === 'en' ? ': ' : '：';
    const meta = [
      alert.sender_name ? `${t('sender')}${colon}${alert.sender_name}` : '',
      alert.sent ? `${t('sent')}${colon}${timeText(alert.sent)}` : '',
      alert.expires ? `${t('expires')}${colon}${timeText(alert.expires)}` : '',
    ].filter(Boolean).map((s) => `<span>${esc(s)}</span>`).join('');
    const live = alert.state === 'active' && !S.viewing;
    const foot = live
      ? (alert.acknowledged
        ? `<span class="acked">✓ ${esc(t('acked'))}</span>`
        : `<button class="btn primary f" tabindex="-1" data-key="ack" data-default="1" id="ack">${esc(t('ack'))}</button>`)
      : `<span class="alert-meta">${esc(t(`st_${alert.state}`))}</span>`;
    return `<article class="alert-card lvl-border-${lvl}" id="alert-card" data-alert="${esc(alert.id)}" data-level="${lvl}">
      <div class="alert-band lvl-${lvl}"><span id="alert-level">${esc(levelName(lvl))}</span>${drill}${seq}</div>
      <div class="alert-body">
        <h1 class="alert-headline" id="alert-headline">${esc(text.headline)}</h1>
        ${text.description ? `<p class="alert-desc">${esc(text.description)}</p>` : ''}
        ${text.instruction ? `<p class="alert-instr">${esc(text.instruction)}</p>` : ''}
        <p class="alert-meta">${meta}</p>
      </div>
      <div class="alert-foot">${foot}</div>
    </article>`;
  }

  function renderAlerts() {
    const active = S.alerts.active;
    let card;
    const viewing = S.viewing && S.alerts.history.find((a) => a.id === S.viewing);
    if (viewing) card = renderAlertCard(viewing, 0, 1);
    else if (active.length) card = renderAlertCard(active[S.alertIndex] || active[0], S.alertIndex, active.length);
    else card = `<div class="alert-card" id="no-alerts"><div class="calm"><strong>✓ ${esc(t('no_alerts'))}</strong>${esc(t('no_alerts_sub'))}</div></div>`;
    const hist = S.alerts.history.map((a) => {
      const lvl = clamp(Number(a.level) || 4, 1, 4);
      const text = alertText(a);
      return `<li><button class="hist f${S.viewing === a.id ? ' viewing' : ''}" tabindex="-1" data-key="hist:${esc(a.id)}"><span class="dot lvl-${lvl}"></span><span class="h">${esc(text.headline)}</span><span class="s">${esc(t(`st_${a.state}`))} · ${esc(timeText(a.sent))}</span></button></li>`;
    }).join('');
    return `<div class="alerts">${card}
      <section class="history"><h2 class="col-title">${esc(t('history'))}</h2>
        <ul class="list scroll" data-scroll="history" id="alert-history">${hist || `<li class="empty">${esc(t('no_history'))}</li>`}</ul></section>
    </div>`;
  }

  function renderServices() {
    if (!S.services.length) {
      return `<div class="empty" id="services-empty"><strong>${esc(t('no_services'))}</strong>${esc(t('no_services_sub'))}</div>`;
    }
    const cards = S.services.map((s, i) => {
      const title = lang() === 'en' && s.title_en ? s.title_en : s.title;
      return `<button class="svc f" tabindex="-1" data-key="svc:${esc(s.service_id)}"${i === 0 ? ' data-default="1"' : ''}><span class="title">${esc(title)}</span><span class="kind">${esc(STR[lang()][`k_${s.kind}`] || s.kind)}</span></button>`;
    }).join('');
    return `<div class="grid scroll" data-scroll="services">${cards}</div>`;
  }

  // ---- operator services ---------------------------------------------------------------
  // Rendered from the pushed definition alone: shop (categories → items → quantity → order →
  // QR code and status), government (notices with read receipts, look-ups typed with the number
  // keys, appointments), information cards. No service is known to the page in advance.

  const yuan = (fen) => `¥${Math.floor(fen / 100)}.${String(fen % 100).padStart(2, '0')}`;
  const tx = (o, k) => (lang() === 'en' && o[`${k}_en`] ? o[`${k}_en`] : o[k] || '');
  let svcTimer = 0;

  async function loadServices() {
    const r = await api('GET', '/api/v1/services');
    if (r.ok) {
      S.services = r.data;
      if (S.screen === 'services') render();
    }
  }

  async function openService(id) {
    const r = await api('GET', `/api/v1/services/${encodeURIComponent(id)}`);
    if (!r.ok) { toast(t('r_unknown_service'), true); return loadServices(); }
    S.lastFocus.services = `svc:${id}`;
    S.svc = { def: r.data, view: 'main', cat: r.data.categories ? r.data.categories[0].id : null, read: [] };
    S.screen = 'service';
    S.zone = 'main';
    S.focus = '';
    if (r.data.kind === 'gov') {
      const rd = await api('GET', `/api/v1/services/${encodeURIComponent(id)}/notices/read`);
      if (rd.ok && S.svc) S.svc.read = rd.data;
    }
    render();
  }

  function svcView(view, extra = {}) {
    Object.assign(S.svc, { view, ...extra });
    S.focus = '';
    render();
  }

  function stopPolling() { clearTimeout(svcTimer); svcTimer = 0; }

  function pollOrder() {
    stopPolling();
    svcTimer = setTimeout(async () => {
      const sv = S.svc;
      if (!sv || !sv.order || S.screen !== 'service') return;
      if (['delivered', 'cancelled', 'rejected', 'price_changed', 'booked', 'full'].includes(sv.order.state)) return;
      const path = sv.view === 'booking'
        ? `/api/v1/services/${encodeURIComponent(sv.def.service_id)}/bookings/${encodeURIComponent(sv.order.key)}`
        : `/api/v1/orders/${encodeURIComponent(sv.order.key)}`;
      const r = await api('GET', path);
      if (r.ok && S.svc === sv) {
        const changed = r.data.state !== sv.order.state;
        sv.order = r.data;
        if (changed) render();
      }
      if (S.svc === sv) pollOrder();
    }, 1000);
  }

  async function placeOrder(reorderKey) {
    const sv = S.svc;
    const r = reorderKey
      ? await api('POST', `/api/v1/orders/${encodeURIComponent(reorderKey)}/reorder`)
      : await api('POST', '/api/v1/orders', { service_id: sv.def.service_id, lines: [{ item_id: sv.item.id, quantity: sv.qty }] });
    if (r.status === 401) return openPairing(() => placeOrder(reorderKey));
    if (!r.ok) return toast(errorText(r), true);
    svcView('order', { order: r.data });
    pollOrder();
    return undefined;
  }

  async function submitQuery() {
    const sv = S.svc;
    const r = await api('POST', `/api/v1/services/${encodeURIComponent(sv.def.service_id)}/queries/${encodeURIComponent(sv.query.id)}`, { fields: sv.fields });
    if (r.status === 401) return openPairing(() => submitQuery());
    if (S.svc !== sv) return undefined;
    sv.fields = {}; // what was typed is not kept once the answer is in
    if (r.ok) return svcView('result', { result: r.data });
    svcView('result', { result: null, error: r.status === 400 ? t('invalid_fields') : t('unavailable') });
    return undefined;
  }

  async function readNotice(id) {
    const sv = S.svc;
    const r = await api('POST', `/api/v1/services/${encodeURIComponent(sv.def.service_id)}/notices/${encodeURIComponent(id)}/read`);
    if (r.status === 401) return openPairing(() => readNotice(id));
    if (!r.ok && r.status !== 204) return toast(errorText(r), true);
    if (!sv.read.includes(id)) sv.read.push(id);
    toast(t('read_done'));
    return svcView('main');
  }

  async function book(slotId) {
    const sv = S.svc;
    const r = await api('POST', `/api/v1/services/${encodeURIComponent(sv.def.service_id)}/appointments/${encodeURIComponent(sv.appt.id)}`, { slot_id: slotId });
    if (r.status === 401) return openPairing(() => book(slotId));
    if (!r.ok) return toast(errorText(r), true);
    svcView('booking', { order: r.data });
    pollOrder();
    return undefined;
  }

  function serviceDigit(d) {
    const sv = S.svc;
    if (!sv) return undefined;
    if (sv.view === 'qty') {
      const n = Number(`${sv.qtyTyped || ''}${d}`);
      sv.qtyTyped = String(n);
      sv.qty = clamp(n || 1, 1, sv.def.max_quantity || 99);
      return render();
    }
    if (sv.view === 'query' && S.focus.startsWith('fld:')) {
      const f = sv.query.fields.find((x) => x.name === S.focus.slice(4));
      const cur = sv.fields[f.name] || '';
      if (cur.length < (f.type === 'id_card' ? 18 : f.max_length)) sv.fields[f.name] = cur + d;
      return render();
    }
    return undefined;
  }

  function serviceBack() {
    const sv = S.svc;
    stopPolling();
    if (!sv || sv.view === 'main') {
      S.svc = null;
      return show('services', 'main');
    }
    if (sv.view === 'qty') return svcView('main');
    if (sv.view === 'order') return svcView('main', { order: null });
    if (sv.view === 'result') return svcView('query');
    if (sv.view === 'query') { sv.fields = {}; return svcView('main'); }
    return svcView('main');
  }

  function serviceKey(a, key) {
    const sv = S.svc;
    if (a.type === 'back') return serviceBack();
    if (a.type === 'backspace') {
      if (sv && sv.view === 'query' && key.startsWith('fld:')) {
        const name = key.slice(4);
        sv.fields[name] = (sv.fields[name] || '').slice(0, -1);
        return render();
      }
      return serviceBack();
    }
    if (!sv) return undefined;
    if (key === 'qty' && (a.type === 'left' || a.type === 'right')) {
      sv.qtyTyped = '';
      sv.qty = clamp(sv.qty + (a.type === 'left' ? -1 : 1), 1, Math.min(sv.def.max_quantity || 99, Math.max(1, sv.item.stock)));
      return render();
    }
    if (a.type === 'ok') {
      if (key.startsWith('cat:')) { sv.cat = key.slice(4); return render(); }
      if (key.startsWith('item:')) {
        const item = sv.def.items.find((i) => i.id === key.slice(5));
        if (!item || item.stock <= 0) return toast(t('stock_out'), true);
        return svcView('qty', { item, qty: 1, qtyTyped: '' });
      }
      if (key === 'qty' || key === 'confirm') return placeOrder();
      if (key === 'reorder') return placeOrder(sv.order.key);
      if (key.startsWith('notice:')) return svcView('notice', { notice: sv.def.notices.find((n) => n.id === key.slice(7)) });
      if (key.startsWith('read:')) return readNotice(key.slice(5));
      if (key.startsWith('query:')) {
        const query = sv.def.queries.find((q) => q.id === key.slice(6));
        return svcView('query', { query, fields: {} });
      }
      if (key.startsWith('fx:')) {
        const name = key.slice(3);
        const cur = sv.fields[name] || '';
        if (cur.length === 17) {
          sv.fields[name] = `${cur}X`;
          S.focus = 'submit'; // the number is complete: next is asking
        }
        return render();
      }
      if (key === 'submit') return submitQuery();
      if (key.startsWith('appt:')) return svcView('slots', { appt: sv.def.appointments.find((x) => x.id === key.slice(5)) });
      if (key.startsWith('slot:')) return book(key.slice(5));
    }
    if (key.startsWith('cat:') && (a.type === 'up' || a.type === 'down')) {
      move(a.type);
      if (S.focus.startsWith('cat:') && S.focus.slice(4) !== sv.cat) { sv.cat = S.focus.slice(4); render(); }
      return undefined;
    }
    if (['up', 'down', 'left', 'right'].includes(a.type)) return move(a.type);
    return undefined;
  }

  function btn(key, inner, cls = '', def = false) {
    return `<button class="${cls} f" tabindex="-1" data-key="${esc(key)}"${def ? ' data-default="1"' : ''}>${inner}</button>`;
  }

  function renderService() {
    const sv = S.svc;
    if (!sv) return '';
    const d = sv.def;
    const head = `<h2 class="svc-title" id="svc-title">${esc(tx(d, 'title'))}</h2>`;
    let body = '';
    if (d.kind === 'shop') body = renderShop(sv, d);
    else if (d.kind === 'gov') body = renderGov(sv, d);
    else {
      const img = d.image ? `<img class="svc-img" alt="" src="${esc(d.image)}">` : '';
      body = `<div class="svc-info">${img}<p class="svc-body">${esc(tx(d, 'body'))}</p></div>`;
    }
    return `<div class="service" data-kind="${esc(d.kind)}">${head}${body}</div>`;
  }

  function itemCard(it) {
    const img = it.image ? `<img alt="" src="${esc(it.image)}">` : '';
    const stock = it.stock <= 0 ? t('stock_out') : it.stock < 10 ? t('stock_left', { n: it.stock }) : '';
    return btn(`item:${it.id}`, `${img}<span class="title">${esc(tx(it, 'title'))}</span><span class="price">${esc(yuan(it.price_fen))}${it.unit ? ` / ${esc(tx(it, 'unit'))}` : ''}</span><span class="stock">${esc(stock)}</span>`, `item${it.stock <= 0 ? ' out' : ''}`);
  }

  function renderShop(sv, d) {
    if (sv.view === 'qty') {
      const it = sv.item;
      return `<div class="svc-panel" id="svc-qty"><p class="big">${esc(tx(it, 'title'))}</p>
        <p class="price">${esc(yuan(it.price_fen))}</p>
        <div class="row">${btn('qty', `${esc(t('qty'))} <b id="qty">◀ ${sv.qty} ▶</b>`, 'qty-btn', true)}</div>
        <p class="total">${esc(t('total'))} <b id="qty-total">${esc(yuan(it.price_fen * sv.qty))}</b></p>
        <div class="row">${btn('confirm', esc(t('confirm_order')), 'primary')}</div></div>`;
    }
    if (sv.view === 'order') return renderOrder(sv.order);
    const cats = d.categories.map((c, i) => btn(`cat:${c.id}`, esc(tx(c, 'title')), `cat${c.id === sv.cat ? ' selected' : ''}`, i === 0)).join('');
    const items = d.items.filter((it) => it.category === sv.cat).map(itemCard).join('');
    return `<div class="shop"><nav class="cats">${cats}</nav><div class="items grid scroll" data-scroll="items">${items}</div></div>`;
  }

  function renderOrder(o) {
    const lines = o.lines.map((l) => `<li>${esc(tx(l, 'title'))} × ${l.quantity} <span>${esc(yuan(l.price_fen * l.quantity))}</span></li>`).join('');
    let extra = '';
    if (o.state === 'confirmed' && o.pay_qr) {
      extra = `<img class="qr" id="pay-qr" alt="QR" src="${esc(o.pay_qr)}">`;
    } else if (o.state === 'price_changed' && o.prices) {
      extra = `<p class="total">${esc(t('new_total'))} <b id="new-total">${esc(yuan(o.new_total_fen))}</b></p>${btn('reorder', esc(t('reorder')), 'primary', true)}`;
    } else if (o.state === 'rejected' && o.reason) {
      extra = `<p class="sub">${esc(t(`r_${o.reason}`))}</p>`;
    }
    const no = o.order_id ? `<p class="sub">${esc(t('order_no'))} ${esc(o.order_id)}</p>` : '';
    return `<div class="svc-panel order" id="svc-order" data-state="${esc(o.state)}">
      <p class="big" id="order-state">${esc(t(`o_${o.state}`))}</p>${no}
      <ul class="lines">${lines}</ul><p class="total">${esc(t('total'))} <b>${esc(yuan(o.total_fen))}</b></p>${extra}</div>`;
  }

  function renderGov(sv, d) {
    if (sv.view === 'notice') {
      const n = sv.notice;
      const done = sv.read.includes(n.id);
      return `<div class="svc-panel notice" id="svc-notice"><p class="big">${esc(tx(n, 'title'))}</p><p class="sub">${esc(n.published)}</p>
        <p class="svc-body">${esc(tx(n, 'body'))}</p>${done ? `<p class="sub">✓ ${esc(t('read_done'))}</p>` : btn(`read:${n.id}`, esc(t('read_confirm')), 'primary', true)}</div>`;
    }
    if (sv.view === 'query') {
      const q = sv.query;
      const fields = q.fields.map((f, i) => {
        const v = sv.fields[f.name] || '';
        const x = f.type === 'id_card' ? btn(`fx:${f.name}`, esc(t('key_x')), 'xkey') : '';
        return `<div class="field"><span class="k">${esc(tx(f, 'label'))}</span>${btn(`fld:${f.name}`, `<span class="typed">${esc(v) || '&nbsp;'}</span>`, 'input', i === 0)}${x}</div>`;
      }).join('');
      return `<div class="svc-panel query" id="svc-query"><p class="big">${esc(tx(q, 'title'))}</p>${fields}${btn('submit', esc(t('submit')), 'primary')}</div>`;
    }
    if (sv.view === 'result') {
      if (!sv.result) return `<div class="svc-panel" id="svc-result"><p class="big err">${esc(sv.error)}</p></div>`;
      const res = sv.result.ok ? (sv.result.result && sv.result.result.lines) || [] : [];
      const rows = res.map((l) => `<dt>${esc(tx(l, 'label'))}</dt><dd>${esc(tx(l, 'value'))}</dd>`).join('');
      return `<div class="svc-panel" id="svc-result"><p class="big">${esc(tx(sv.query, 'title'))}</p>${sv.result.ok ? `<dl class="facts">${rows}</dl>` : `<p class="err">${esc(t('invalid_fields'))}</p>`}</div>`;
    }
    if (sv.view === 'slots') {
      const a = sv.appt;
      const slots = a.slots.map((sl, i) => btn(`slot:${sl.id}`, `${esc(timeText(sl.start))}<small>${esc(t('cap_left', { n: sl.capacity }))}</small>`, 'slot', i === 0)).join('');
      return `<div class="svc-panel" id="svc-slots"><p class="big">${esc(tx(a, 'title'))}</p><p class="sub">${esc(tx(a, 'location'))}</p><p>${esc(t('choose_slot'))}</p><div class="slots">${slots}</div></div>`;
    }
    if (sv.view === 'booking') {
      const b = sv.order;
      return `<div class="svc-panel" id="svc-booking" data-state="${esc(b.state)}"><p class="big" id="booking-state">${esc(t(`b_${b.state}`))}</p>${b.booking_id ? `<p class="sub">${esc(b.booking_id)}</p>` : ''}</div>`;
    }
    const section = (title, items) => (items ? `<section><h3 class="col-title">${esc(title)}</h3><div class="list">${items}</div></section>` : '');
    const notices = (d.notices || []).map((n, i) => btn(`notice:${n.id}`, `${sv.read.includes(n.id) ? '✓ ' : '● '}${esc(tx(n, 'title'))}`, 'row-btn', i === 0)).join('');
    const queries = (d.queries || []).map((q) => btn(`query:${q.id}`, esc(tx(q, 'title')), 'row-btn')).join('');
    const appts = (d.appointments || []).map((x) => btn(`appt:${x.id}`, esc(tx(x, 'title')), 'row-btn')).join('');
    return `<div class="gov">${section(t('notices'), notices)}${section(t('queries'), queries)}${section(t('appointments'), appts)}</div>`;
  }

  async function loadSettings() {
    const [st, pin] = await Promise.all([api('GET', '/api/v1/settings'), api('GET', '/api/v1/pairing/pin')]);
    if (st.ok) S.settings = st.data;
    if (pin.ok) S.pin = { ...pin.data, at: Date.now() };
    else if (pin.status === 403) S.pin = { off: true };
    if (S.screen === 'settings') render();
  }

  function renderSettings() {
    const st = S.settings || { gateway_id: S.gateway.id, version: S.gateway.version, region: S.gateway.region, household: S.gateway.household, network: [] };
    const addrs = (st.network || []).map((n) => `<span class="addr">${esc(n.address)} <small>(${esc(n.interface)})</small></span>`).join('') || esc(t('no_network'));
    let pin = '<p class="pin">······</p>';
    if (S.pin && S.pin.off) pin = `<p class="sub">${esc(t('pin_off'))}</p>`;
    else if (S.pin) {
      const left = Math.max(0, S.pin.expires_in_s - Math.floor((Date.now() - S.pin.at) / 1000));
      const when = left >= 60 ? t('pin_expires', { m: Math.ceil(left / 60) }) : t('pin_expires_s', { s: left });
      pin = `<p class="pin" id="pin">${esc(S.pin.pin.slice(0, 3))} ${esc(S.pin.pin.slice(3))}</p><p class="sub">${esc(when)}</p>`;
    }
    const langBtn = (l, label) => `<button class="lang f${lang() === l ? ' current' : ''}" tabindex="-1" data-key="lang:${l}"${lang() === l ? ' data-default="1"' : ''}>${lang() === l ? '✓ ' : ''}${label}</button>`;
    return `<div class="settings">
      <dl class="facts">
        <dt>${esc(t('gateway_id'))}</dt><dd id="gateway-id">${esc(st.gateway_id)}</dd>
        <dt>${esc(t('region'))}</dt><dd>${esc(regionText(st.region))}</dd>
        <dt>${esc(t('household'))}</dt><dd>${esc(st.household || t('not_provisioned'))}</dd>
        <dt>${esc(t('version'))}</dt><dd>${esc(st.version)}</dd>
        <dt>${esc(t('network'))}</dt><dd>${addrs}</dd>
      </dl>
      <div class="side">
        <div class="pin-card"><p class="k">${esc(t('pin_title'))}</p>${pin}<p class="sub">${esc(t('pin_sub'))}</p></div>
        <div class="lang-row"><span class="k">${esc(t('language'))}</span>${langBtn('zh', '中文')}${langBtn('en', 'English')}</div>
      </div>
    </div>`;
  }

  let toastTimer = 0;
  function toast(text, error = false) {
    const el = $('toast');
    el.textContent = text;
    el.className = `toast${error ? ' error' : ''}`;
    el.hidden = false;
    clearTimeout(toastTimer);
    toastTimer = setTimeout(() => { el.hidden = true; }, 4000);
  }

  function tick() {
    const d = new Date();
    $('clock').textContent = `${String(d.getHours()).padStart(2, '0')}:${String(d.getMinutes()).padStart(2, '0')}`;
    expirePending();
    if (S.screen === 'settings' && S.pin && !S.pin.off) {
      const left = S.pin.expires_in_s - (Date.now() - S.pin.at) / 1000;
      // The PIN changes after each pairing too: re-read it now and then while it is on screen.
      if (left <= 0 || Date.now() - S.pin.at > 15000) loadSettings();
      else if (!S.dialog) render();
    }
  }

  // ---- start ---------------------------------------------------------------------------

  document.addEventListener('keydown', onKey);
  document.addEventListener('click', (e) => {
    const el = e.target.closest('.f');
    if (!el || S.dialog) return;
    setFocus(el.dataset.key);
    handle({ type: 'ok' });
  });
  if (S.lang) applyLang();
  render();
  connect();
  tick();
  setInterval(tick, 5000);
  setInterval(() => { if (S.connected) loadAlerts(); }, ALERT_POLL_MS);
})();
