// The console's one script: confirmations, and live pages that reload their data while something runs.
document.addEventListener("submit", (event) => {
  const question = event.target.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});
document.addEventListener("DOMContentLoaded", () => {
  const live = document.querySelector("[data-live-every]");
  if (!live) return;
  const seconds = Number(live.dataset.liveEvery) || 5;
  setTimeout(() => window.location.reload(), seconds * 1000);  // a running flywheel run: fresh rounds
});
