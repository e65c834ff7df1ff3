// Live progress on the job page: polls the job's counts every second while it is active
// and updates the bar and counts in place (no reload). Same-origin, cookie-authenticated.
(function () {
  "use strict";
  var summary = document.getElementById("job-summary");
  if (!summary || summary.dataset.final === "true") { return; }
  var url = "/jobs/" + encodeURIComponent(summary.dataset.job) + "/progress";
  function set(id, value) {
    var node = document.getElementById(id);
    if (node) { node.textContent = String(value); }
  }
  function poll() {
    fetch(url, { credentials: "same-origin", cache: "no-store" })
      .then(function (answer) { return answer.ok ? answer.json() : null; })
      .then(function (job) {
        if (!job) { window.setTimeout(poll, 3000); return; }
        set("succeeded", job.succeeded);
        set("failed", job.failed);
        set("total", job.total);
        set("percent", job.percent.toFixed(1));
        var status = document.getElementById("job-status");
        status.textContent = job.status;
        status.className = "badge status-" + job.status;
        document.getElementById("job-bar").style.width = job.percent + "%";
        if (job.final) {
          summary.dataset.final = "true";
          document.getElementById("reload-hint").hidden = false;
          var cancel = document.getElementById("cancel");
          if (cancel) { cancel.disabled = true; }
        } else {
          window.setTimeout(poll, 1000);
        }
      })
      .catch(function () { window.setTimeout(poll, 3000); });
  }
  window.setTimeout(poll, 1000);
})();
