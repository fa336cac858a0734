// prunereg leaderboard: the scenario selector, the method highlighter and sortable tables.
// Our own code, no third-party library, no network request. The pages read completely without it:
// every group and every table row is in the HTML; this only hides groups, marks one method and reorders rows.
"use strict";

(function () {
  var AXES = ["phase", "batch", "device", "mode"];
  var HARNESS_AXES = ["phase", "batch", "device"];  // a harness table spans the modes

  function setUpSelector() {
    var form = document.getElementById("scenario");
    if (!form) return;
    // Each group a section on this page, or (a large registry) a link to its own page in the list.
    var groups = Array.prototype.slice.call(document.querySelectorAll("section.group"));
    if (!groups.length) groups = Array.prototype.slice.call(document.querySelectorAll("ul.toc li[data-phase]"));
    var harness = Array.prototype.slice.call(document.querySelectorAll("table.harness, p.harness-link"));
    var heading = document.getElementById("results");
    var selects = {};
    AXES.forEach(function (axis) { selects[axis] = form.elements.namedItem(axis); });

    function matches(element, axes) {
      return axes.every(function (axis) {
        var wanted = selects[axis] ? selects[axis].value : "";
        return wanted === "" || element.dataset[axis] === wanted;
      });
    }

    function apply() {
      var shown = 0;
      groups.forEach(function (section) {
        var visible = matches(section, AXES);
        section.hidden = !visible;
        if (visible) shown += 1;
        if (section.tagName !== "LI") {
          var entry = document.querySelector('ul.toc li[data-group="' + section.id + '"]');
          if (entry) entry.hidden = !visible;
        }
      });
      harness.forEach(function (table) { table.hidden = !matches(table, HARNESS_AXES); });
      var chosen = AXES.map(function (axis) {
        var select = selects[axis];
        if (!select || select.value === "") return null;
        return (axis === "batch" ? "batch " : "") + select.value;
      }).filter(function (part) { return part !== null; });
      var scope = chosen.length ? chosen.join(", ") : "any scenario";
      heading.textContent = "Results: " + scope + " (" + shown + " of " + groups.length +
        " group" + (groups.length === 1 ? "" : "s") + ")";
    }

    // Start on the first group's scenario, so that one comparable picture is in view.
    if (groups.length) {
      AXES.forEach(function (axis) {
        if (selects[axis]) selects[axis].value = groups[0].dataset[axis];
      });
    }
    AXES.forEach(function (axis) {
      if (selects[axis]) selects[axis].addEventListener("change", apply);
    });
    form.hidden = false;
    apply();
  }

  // Choosing a method marks everything that carries its slug in data-method (plot markers, legend
  // entries, front labels, table rows) with "highlighted", and the body with "highlighting": the
  // stylesheet fades the other methods' markers and emphasises the chosen one's.
  function setUpHighlight() {
    var form = document.getElementById("highlight");
    if (!form) return;
    var select = form.elements.namedItem("method");
    var marked = Array.prototype.slice.call(document.querySelectorAll("main [data-method]"));

    function apply() {
      var chosen = select.value;
      document.body.classList.toggle("highlighting", chosen !== "");
      marked.forEach(function (element) {
        element.classList.toggle("highlighted", chosen !== "" && element.getAttribute("data-method") === chosen);
      });
    }

    select.addEventListener("change", apply);
    form.hidden = false;
    apply();
  }

  function cellValue(row, index) {
    var cell = row.cells[index];
    if (!cell) return "";
    return cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent.trim();
  }

  function compare(a, b, numeric) {
    if (numeric) {
      // Empty values (no quality measured) go last in either direction.
      if (a === "" || b === "") return a === b ? 0 : a === "" ? 1 : -1;
      return parseFloat(a) - parseFloat(b);
    }
    return a.localeCompare(b);
  }

  function sortBy(table, index, header) {
    var body = table.tBodies[0];
    if (!body) return;
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    var numeric = header.classList.contains("num");
    var rows = Array.prototype.slice.call(body.rows).map(function (row, position) {
      return { row: row, key: cellValue(row, index), position: position };
    });
    rows.sort(function (x, y) {
      var order = compare(x.key, y.key, numeric);
      if (order !== 0 && !(numeric && (x.key === "" || y.key === ""))) order = ascending ? order : -order;
      return order || x.position - y.position;
    });
    rows.forEach(function (item) { body.appendChild(item.row); });
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) {
      cell.removeAttribute("aria-sort");
    });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }

  function setUpSorting() {
    Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
      if (!table.tHead || !table.tHead.rows.length) return;
      Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, index) {
        header.classList.add("sorter");
        header.tabIndex = 0;
        header.title = "Sort by this column";
        header.addEventListener("click", function () { sortBy(table, index, header); });
        header.addEventListener("keydown", function (event) {
          if (event.key === "Enter" || event.key === " ") {
            event.preventDefault();
            sortBy(table, index, header);
          }
        });
      });
    });
  }

  function start() {
    setUpSelector();
    setUpHighlight();
    setUpSorting();
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
