// Search, filters and collapsible column groups (plain script, no library; the page works offline).
//
// Filters: the form above the tables (hidden without script) hides entry rows that do not match
// the search text (name, folder, description), the kind, best-of-N or verification status; the
// reference rows always stay. Column groups: each group heading of a table with class
// "collapsible" holds a button that shows the group's every column or only its pinned ones
// (data-pin); the groups named in the table's data-collapsed start collapsed, so that the page
// fits a 1,366-px screen. Hidden cells get the hidden attribute; the group headings' colspans
// follow.
(function () {
  "use strict";
  var each = function (list, fn) { Array.prototype.forEach.call(list, fn); };

  // ------------------------------------------------------------------ column groups
  function headerRow(table) { return table.tHead.rows[table.tHead.rows.length - 1]; }
  function setGroup(table, group, expanded) {
    var heads = headerRow(table).cells, hide = [], shown = 0;
    each(heads, function (th, i) {
      if (th.getAttribute("data-group") !== group) { return; }
      var h = !expanded && !th.hasAttribute("data-pin");
      if (h) { hide.push(i); } else { shown += 1; }
      th.hidden = h;
    });
    each(table.rows, function (row) {
      if (row.classList.contains("groups")) { return; }
      each(row.cells, function (cell, i) {
        if (cell.getAttribute("data-group") === group) {
          cell.hidden = hide.indexOf(i) !== -1;
        }
      });
    });
    each(table.querySelectorAll("tr.groups th[data-group]"), function (th) {
      if (th.getAttribute("data-group") !== group) { return; }
      var total = 0;
      each(heads, function (h) { if (h.getAttribute("data-group") === group) { total += 1; } });
      th.colSpan = Math.max(shown, 1);
      var button = th.querySelector("button.toggle");
      button.setAttribute("aria-expanded", expanded ? "true" : "false");
      button.textContent = expanded ? "show fewer" : "show all " + total;
      button.title = expanded ? "show only the summary columns of this group"
                              : "show every column of this group";
    });
  }
  each(document.querySelectorAll("table.collapsible"), function (table) {
    var collapsed = (table.getAttribute("data-collapsed") || "").split(" ");
    each(table.querySelectorAll("tr.groups button.toggle"), function (button) {
      var group = button.getAttribute("data-group");
      var pinned = 0, total = 0;
      each(headerRow(table).cells, function (th) {
        if (th.getAttribute("data-group") !== group) { return; }
        total += 1;
        if (th.hasAttribute("data-pin")) { pinned += 1; }
      });
      if (pinned === total) { return; }  // nothing to collapse
      button.hidden = false;
      button.addEventListener("click", function () {
        setGroup(table, group, button.getAttribute("aria-expanded") !== "true");
      });
      setGroup(table, group, collapsed.indexOf(group) === -1);
    });
  });

  // ------------------------------------------------------------------------ filters
  var form = document.getElementById("filters");
  if (!form) { return; }
  var text = document.getElementById("filter-text");
  var kind = document.getElementById("filter-kind");
  var bon = document.getElementById("filter-bon");
  var ver = document.getElementById("filter-verification");
  var count = document.getElementById("filter-count");
  var rows = document.querySelectorAll("tbody.entries tr[data-entry]");
  function matches(row) {
    var words = text.value.toLowerCase().split(/\s+/).filter(Boolean);
    var hay = (row.getAttribute("data-search") || "").toLowerCase();
    for (var i = 0; i < words.length; i += 1) {
      if (hay.indexOf(words[i]) === -1) { return false; }
    }
    if (kind.value && row.getAttribute("data-kind") !== kind.value) { return false; }
    var n = parseInt(row.getAttribute("data-bon"), 10) || 1;
    if (bon.value === "single" && n !== 1) { return false; }
    if (bon.value === "best" && n === 1) { return false; }
    if (ver.value && row.getAttribute("data-verification") !== ver.value) { return false; }
    return true;
  }
  function apply() {
    var shown = 0;
    each(rows, function (row) {
      var ok = matches(row);
      row.hidden = !ok;
      if (ok) { shown += 1; }
    });
    count.textContent = shown + " of " + rows.length + " entries shown";
  }
  form.addEventListener("submit", function (ev) { ev.preventDefault(); });
  text.addEventListener("input", apply);
  [kind, bon, ver].forEach(function (el) { el.addEventListener("change", apply); });
  form.hidden = false;
  apply();
}());
