document.getElementById('f').addEventListener('submit', async (e) => {
  e.preventDefault();
  const t = new URLSearchParams(location.search).get('token') || '';
  const p1 = document.getElementById('p1');
  const body = p1
    ? {token: t, new_password: p1.value, new_password_confirm: document.getElementById('p2').value}
    : {token: t};
  const r = await fetch(e.target.dataset.action, {method: 'POST', headers: {'content-type': 'application/json'}, body: JSON.stringify(body)});
  document.getElementById('out').textContent = r.ok ? 'Done.' : 'This link is invalid or has expired.';
});
