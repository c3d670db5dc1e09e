// Sortable tables: click (or Enter/Space on) a column header to sort that table's entry rows;
// click again to reverse (the last header row holds the column headers; a row above it may group
// them). Rows in a tbody with class "reference" stay pinned. Numbers sort
// numerically from each cell's data-sort attribute; empty values always go last.
(function () {
  "use strict";
  function headerRow(table) { return table.tHead.rows[table.tHead.rows.length - 1]; }
  function keyOf(row, index) {
    var cell = row.cells[index];
    if (!cell) { return ""; }
    var raw = cell.getAttribute("data-sort");
    return raw === null ? cell.textContent.trim() : raw;
  }
  function compare(a, b, numeric) {
    if (a === "" && b === "") { return 0; }
    if (a === "") { return 1; }
    if (b === "") { return -1; }
    if (numeric) { return parseFloat(a) - parseFloat(b); }
    return a.localeCompare(b);
  }
  function sortTable(table, index, numeric, th) {
    var descending = th.getAttribute("aria-sort") === "ascending";
    Array.prototype.forEach.call(headerRow(table).cells, function (h) { h.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", descending ? "descending" : "ascending");
    Array.prototype.forEach.call(table.tBodies, function (body) {
      if (body.classList.contains("reference")) { return; }
      var rows = Array.prototype.slice.call(body.rows);
      var decorated = rows.map(function (row, i) { return { row: row, key: keyOf(row, index), i: i }; });
      decorated.sort(function (x, y) {
        var empty = (x.key === "") - (y.key === "");
        if (empty !== 0) { return empty; }
        var c = compare(x.key, y.key, numeric);
        if (descending) { c = -c; }
        return c !== 0 ? c : x.i - y.i;
      });
      decorated.forEach(function (d) { body.appendChild(d.row); });
    });
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    if (!table.tHead) { return; }
    Array.prototype.forEach.call(headerRow(table).cells, function (th, index) {
      var numeric = th.getAttribute("data-type") !== "text";
      var button = th.querySelector("button") || th;
      button.addEventListener("click", function () { sortTable(table, index, numeric, th); });
    });
  });
}());
