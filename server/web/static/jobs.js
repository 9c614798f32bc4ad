// Live job progress for the dealer console: polls each open job once a
// second and updates its row until it ends.
(function () {
  var done = { succeeded: 1, failed: 1, rolled_back: 1, canceled: 1, timed_out: 1 };
  function poll(row) {
    var id = row.getAttribute("data-job");
    fetch("/dealer/jobs/" + id + ".json", { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (j) {
        row.querySelector(".state").textContent = j.state;
        // The phase says where an open job is; a finished one's state says it all.
        row.querySelector(".phase").textContent = done[j.state] || j.phase === j.state ? "" : (j.phase || "");
        var pct = 0;
        (j.events || []).forEach(function (e) { if (e.percent) pct = e.percent; });
        if (j.state === "succeeded") pct = 100;
        row.querySelector(".pct").value = pct;
        var cancel = row.querySelector("form.cancel");
        if (cancel && done[j.state]) cancel.hidden = true;
        if (!done[j.state]) setTimeout(function () { poll(row); }, 1000);
      })
      .catch(function () { setTimeout(function () { poll(row); }, 3000); });
  }
  document.querySelectorAll("tr.job").forEach(poll);
})();
