const TOKEN=document.querySelector('meta[name=token]').content, RUN=document.querySelector('meta[name=run]').content;
const say=(m)=>{document.getElementById('status').textContent=m};
const was=sessionStorage.getItem('anitrack-status'); if(was){say(was);sessionStorage.removeItem('anitrack-status')}
async function send(path, body){
  document.querySelectorAll('button').forEach(b=>b.disabled=true); say('re-identifying…');
  const r=await fetch(path,{method:'POST',headers:{'Content-Type':'application/json','X-Review-Token':TOKEN},
                            body:JSON.stringify(Object.assign({run_id:RUN},body))});
  const j=await r.json();
  if(!r.ok){say(j.error); if(r.status===409){setTimeout(()=>location.reload(),1500)}
            else{document.querySelectorAll('button').forEach(b=>b.disabled=false)} return}
  sessionStorage.setItem('anitrack-status', j.message); location.reload();
}
function correct(kind, cluster, extra){return send('/api/correct', Object.assign({kind, cluster}, extra||{}))}
function picked(within){return [...(within||document).querySelectorAll('.pick:checked')].map(x=>x.value)}
function chosenCrops(){return [...document.querySelectorAll('.crops img.chosen')].map(x=>x.dataset.crop)}
document.querySelectorAll('.crops img').forEach(i=>i.onclick=()=>i.classList.toggle('chosen'));
document.querySelectorAll('.pick').forEach(c=>c.onchange=()=>c.closest('.tracklet').classList.toggle('picked',c.checked));
