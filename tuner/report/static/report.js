(function () {
  var figures = JSON.parse(document.getElementById('figure-data').textContent);
  Object.keys(figures).forEach(function (id) {
    var fig = figures[id];
    Plotly.newPlot(id, fig.data, fig.layout, {responsive: true, displaylogo: false});
  });
  document.querySelectorAll('table.sortable').forEach(function (table) {
    var heads = table.querySelectorAll('th');
    heads.forEach(function (th, col) {
      th.addEventListener('click', function () {
        var asc = !th.classList.contains('asc');
        heads.forEach(function (h) { h.classList.remove('asc', 'desc'); });
        th.classList.add(asc ? 'asc' : 'desc');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function (a, b) {
          var x = a.cells[col], y = b.cells[col];
          var p = x.getAttribute('data-sort'), q = y.getAttribute('data-sort');
          if (p === '' || q === '') { return (p === '') - (q === ''); }
          var c = x.getAttribute('data-kind') === 'n' && y.getAttribute('data-kind') === 'n'
            ? parseFloat(p) - parseFloat(q) : (p < q ? -1 : p > q ? 1 : 0);
          return asc ? c : -c;
        });
        rows.forEach(function (r) { body.appendChild(r); });
      });
    });
  });
})();
