// Conveyor dashboard: the CSRF header on htmx requests, and the charts (uPlot) drawn from
// the data-chart attribute of each chart's box, again whenever a live region is swapped in.
(function () {
  "use strict";
  var COLOURS = {
    succeeded: "#116329", failed: "#a40e26", retried: "#7d4e00", dead: "#6e2a8c",
    wait_p50: "#0b5cad", wait_p95: "#5a8fd0", run_p50: "#116329", run_p95: "#5aa36c"
  };
  var drawn = [];

  function csrf() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  function draw(root) {
    drawn = drawn.filter(function (plot) {
      if (document.body.contains(plot.root)) { return true; }
      plot.destroy();
      return false;
    });
    if (typeof uPlot === "undefined") { return; }
    (root || document).querySelectorAll("[data-chart]").forEach(function (box) {
      var chart = JSON.parse(box.getAttribute("data-chart"));
      var names = Object.keys(chart.series);
      var latency = names[0] && names[0].indexOf("_p") > 0;
      var data = [chart.x].concat(names.map(function (name) { return chart.series[name]; }));
      box.textContent = "";
      var options = {
        width: Math.max(320, box.clientWidth || 520), height: 220,
        series: [{}].concat(names.map(function (name) {
          return {
            label: name, stroke: COLOURS[name] || "#333", width: 2, spanGaps: false,
            // A latency is known only for minutes when something ran: show lone values.
            points: latency ? { show: true, size: 6 } : undefined,
            value: latency ? function (u, v) { return v == null ? "—" : v.toFixed(3) + " s"; } : undefined
          };
        })),
        axes: [{}, { size: 60, values: latency ? function (u, ticks) {
          return ticks.map(function (v) { return v + " s"; });
        } : undefined }]
      };
      drawn.push(new uPlot(options, data, box));
    });
  }

  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.body && document.body.addEventListener("htmx:configRequest", function (event) {
    event.detail.headers["X-CSRF-Token"] = csrf();
  });
  document.addEventListener("htmx:afterSettle", function (event) { draw(event.target); });
})();
